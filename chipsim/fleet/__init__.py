"""Fleets of chips: N instances of one model, their yield against an accuracy SLO, and the
time until each breaches it; evaluated by interchangeable executors (local processes or Ray).

Typical use::

    from chipsim import ChipStore
    from chipsim.fleet import FleetEvalSpec, FleetSpec, FleetStore, evaluate_fleet, program_fleet

    store = ChipStore("state")
    fleets = FleetStore(store)
    spec = FleetSpec(fleet_id="mlp", model_name="mlp-hwa", n_chips=32, seed=7)
    program_fleet(store, spec, onnx_bytes, eval_npz_bytes, fleets=fleets)
    report = evaluate_fleet(fleets, "mlp", FleetEvalSpec.parse(
        {"ages_s": [1, 3600, 86400, 31536000], "readouts": 3,
         "slo": {"metric": "normalised_accuracy", "threshold": 0.9}}))

Never imports torch (serving path).
"""

from chipsim.fleet.breach import (
    BreachStatus,
    BreachTime,
    breach_from_evaluation,
    breach_percentile,
    seconds_until_breach,
    time_to_breach,
)
from chipsim.fleet.errors import FleetCancelled, FleetCorruptError, FleetError, FleetExistsError, FleetNotFoundError
from chipsim.fleet.evaluate import EvalRow, EvalTask, evaluate_task, make_tasks, summarise
from chipsim.fleet.executors import Executor, LocalProcessExecutor, SerialExecutor
from chipsim.fleet.manifest import Fleet, FleetChip, FleetListing, FleetStore, open_chip_store
from chipsim.fleet.program import program_fleet
from chipsim.fleet.run import evaluate_fleet, executor_from_env
from chipsim.fleet.spec import FleetEvalSpec, FleetSpec, SloSpec, chip_seed, fleet_chip_id
from chipsim.fleet.stats import distribution, wilson_interval, yield_summary

__all__ = [
    "BreachStatus",
    "BreachTime",
    "EvalRow",
    "EvalTask",
    "Executor",
    "Fleet",
    "FleetCancelled",
    "FleetChip",
    "FleetCorruptError",
    "FleetError",
    "FleetEvalSpec",
    "FleetExistsError",
    "FleetListing",
    "FleetNotFoundError",
    "FleetSpec",
    "FleetStore",
    "LocalProcessExecutor",
    "SerialExecutor",
    "SloSpec",
    "breach_from_evaluation",
    "breach_percentile",
    "chip_seed",
    "distribution",
    "evaluate_fleet",
    "evaluate_task",
    "executor_from_env",
    "fleet_chip_id",
    "make_tasks",
    "open_chip_store",
    "program_fleet",
    "seconds_until_breach",
    "summarise",
    "time_to_breach",
    "wilson_interval",
    "yield_summary",
]
