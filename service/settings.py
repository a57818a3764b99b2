"""Service settings, read from ``AGEDCHIP_*`` environment variables (pydantic-settings).

Every field below is one variable: ``state_dir`` is ``AGEDCHIP_STATE_DIR`` and so on. Sizes are
bytes, durations seconds. ``python -m service --help`` prints the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chipsim import PRESETS
from chipsim.modes import DEFAULT_MVM_NOISE, MVM_NOISE_TABLE_DEPRECATION, MvmNoiseSource
from chipsim.runtime import CACHE_BYTES, INITIALIZERS_MAX_BYTES
from service.batching import BatchConfig, BatchConfigError
from service.durations import DAY
from service.ids import CHIP_ID_RULE, is_chip_id
from service.memory import DEFAULT_BUDGET_SHARE, memory_limit

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration of the agedchip HTTP service."""

    model_config = SettingsConfigDict(env_prefix="AGEDCHIP_", extra="ignore", validate_default=True)

    # --- network
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    access_log: bool = Field(False, description="Log every request (uvicorn access log); off for throughput.")

    # --- storage
    state_dir: Path = Field(Path("state"), description="Folder of the chip store (chips/, blobs/, tmp/).")
    read_only: bool = Field(
        False,
        description="Serve as a read-only replica of a state folder another process "
        "writes: no lock taken, nothing written, no default chip; POST "
        "/program, DELETE /chips/{id} and recalibration answer 405. Chips "
        "the writer programs or deletes appear or go within "
        "`read_only_relist_seconds`.",
    )
    read_only_relist_seconds: float = Field(
        10.0,
        gt=0,
        le=86400,
        description="How often a read-only replica re-lists the store, "
        "seconds (each pass reads every chip's manifest; new or "
        "changed chips are loaded and verified).",
    )
    zoo_dir: Path = Field(
        REPO_ROOT / "models" / "zoo", description="Model zoo folder: <name>.onnx and <name>.eval.npz (+ index.json)."
    )

    # --- the embedded default chip
    default_model: str = Field(
        "cnn-hwa", description="Zoo model programmed as chip `default_chip_id` on first start ('' = none)."
    )
    default_chip_id: str = Field("default", description="Id of the chip programmed on first start.")
    default_profile: str = Field("pcm", description=f"Preset of the default chip, one of {sorted(PRESETS)}.")
    default_seed: int = Field(0, ge=0, description="Programming seed of the default chip.")
    default_time_scale: float = Field(
        DAY,
        ge=0,
        le=1e9,
        description="Chip seconds per wall-clock second of the default chip (86400: one day of ageing per "
        "second, a year in about 6 minutes, 10 years in about an hour).",
    )

    # --- security
    api_key: SecretStr | None = Field(
        None,
        description="Key for POST /program and DELETE /chips/{id} (X-API-Key or Authorization: Bearer). Unset = open.",
    )
    infer_api_key: SecretStr | None = Field(
        None,
        description="Key for every other route that computes or shows chips "
        "(inference, evaluation, drift, chip listing and "
        "summaries, the zoo, OIP model metadata, jobs). Unset = "
        "open. The management key is accepted there too.",
    )

    # --- limits
    max_upload_bytes: int = Field(
        256 << 20,
        ge=1024,
        description="Largest POST /program body (multipart), bytes (default: resnet18 with its calibration "
        "and eval sets, 75.6 MB, three times over).",
    )
    max_request_bytes: int = Field(16 << 20, ge=1024, description="Largest body of any other request, bytes.")
    max_batch: int = Field(4096, ge=1, description="Largest batch (first dimension) of an inference request.")
    max_chips: int = Field(64, ge=1, description="Most chips in the store (ready + corrupt + being programmed).")
    max_eval_samples: int = Field(10000, ge=1, description="Largest labelled eval set accepted at programming.")
    max_archive_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="Largest uncompressed content of a .zip/.tar model upload (a model with external data), bytes.",
    )
    max_archive_members: int = Field(256, ge=1, description="Most files and folders in a .zip/.tar model upload.")
    max_eval_readouts: int = Field(50, ge=1, le=1000, description="Largest `readouts` of POST /chips/{id}/evaluate.")
    max_tiles: int = Field(
        512,
        ge=1,
        description="Most crossbar tiles of a chip to program, estimated from the model "
        "and profile before any work (a session build took 2.0 s at 256 "
        "tiles, 7.7 s at 512, 62 s at 2048).",
    )
    max_devices: int = Field(
        128 << 20,
        ge=1,
        description="Most devices (2 per analog weight) of a chip to program, "
        "checked before any work (default: what a 256 MiB upload of "
        "float32 weights holds).",
    )
    max_tensor_elements: int = Field(
        1 << 28,
        ge=1,
        description="Most elements of any tensor a model computes, "
        "at batch `max_batch` (shape inference, else a "
        "trial run), checked when programming (default "
        "2^28 = 1 GiB of float32: 32x the zoo's largest).",
    )
    max_graph_elements: int = Field(
        1 << 30,
        ge=1,
        description="Most elements of all tensors a model computes "
        "together, at batch `max_batch`, checked when "
        "programming (default 2^30 = 4 GiB of float32: 7x "
        "the zoo's largest).",
    )

    # --- runtime
    ort_threads: int = Field(
        1, ge=0, le=64, description="onnxruntime intra-op threads per inference (0 = onnxruntime's default: all cores)."
    )
    binding: str = Field(
        "initializers",
        description="How read-out weights reach onnxruntime: 'initializers' "
        "(a session per cached age: faster for repeated ages, 4-50 ms "
        "per new age) or 'inputs' (weights fed per run: cheap new ages).",
    )
    mvm_noise: str = Field(
        DEFAULT_MVM_NOISE.value,
        description="The sampler of per-MVM noise (one new Gaussian per analog output and "
        "request, independent across outputs, samples and requests): 'fresh-q16' (default: 16 "
        "fresh random bits pick one of 2^16 equiprobable bins of N(0,1), ~1.3 ns per draw, CDF "
        "within 1.5e-5 of the Gaussian) or 'fresh' (numpy's exact ziggurat, ~8 ns per draw). "
        "'table' is deprecated: accepted, logged and served as 'fresh' (its windows overlapped "
        "between requests).",
    )
    cache_bytes: int = Field(
        CACHE_BYTES,
        ge=0,
        description="Read-out cache per chip, bytes (default: two ages of resnet18 on 'pcm'; "
        "`memory_budget` bounds all chips together).",
    )
    initializers_max_bytes: int = Field(
        INITIALIZERS_MAX_BYTES,
        ge=0,
        description="With binding 'initializers', a chip whose read-out weights (all tiles, float32) "
        "exceed this many bytes binds them as 'inputs' (no session per age, ~20 instead of "
        "~100 bytes per weight at a new age).",
    )
    cache_entries: int = Field(32, ge=1, description="Read-out cache per chip, entries (ages × read seeds).")
    infer_concurrency: int = Field(
        0,
        ge=0,
        le=256,
        description="Inference requests computed at the same time; more wait in line (0 = number of CPU cores).",
    )
    program_concurrency: int = Field(1, ge=1, le=16, description="Chips programmed at the same time.")
    eval_concurrency: int = Field(1, ge=1, le=16, description="Evaluations and drift requests run at the same time.")
    max_queue_infer: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Inference requests waiting in line (beyond those computing); more get 429 + Retry-After.",
    )
    max_queue_eval: int = Field(
        4, ge=0, le=10_000, description="Evaluation and drift requests waiting in line; more get 429 + Retry-After."
    )
    max_queue_program: int = Field(
        2, ge=0, le=10_000, description="POST /program requests waiting in line; more get 429 + Retry-After."
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait in a line, seconds; then 429 + Retry-After."
    )
    # --- dynamic batching of POST /infer and OIP /v2/models/{name}/infer (service.batching)
    batch_max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Longest wait of an unseeded inference request (/infer or OIP) for others to share its run "
        "(same chip, age, read seed, GDC mode, input shape), milliseconds; a batch starts "
        "sooner when it is full or reaches the largest preferred size. 0: no waiting, a batch "
        "takes the requests that queued while the slots were busy (measured best on 2 cores: "
        "bench/results/load_test.md).",
    )
    batch_max_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="Most samples of a dynamic batch (1 = no batching); capped at AGEDCHIP_MAX_BATCH. "
        "Requests with a seed, or of this many samples, always run alone.",
    )
    batch_preferred_sizes: str = Field(
        "",
        description="Batch sizes (samples) a batch starts at without waiting for the delay, "
        "comma-separated and increasing, e.g. '8,16' ('' = only the largest batch).",
    )
    memory_budget: int = Field(
        0,
        ge=0,
        description="Process memory (RSS) budget, bytes: a read-out at a new age "
        "is refused (503 + Retry-After) when its estimated cost does not "
        "fit. 0 = 75 % of the memory limit (cgroup, else physical).",
    )

    # --- fleets (chipsim.fleet)
    fleet_workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Worker processes of a fleet evaluation (local), or "
        "tasks in flight (Ray); 0 = the number of CPU cores.",
    )
    ray_address: str = Field(
        "",
        description="Ray cluster that runs fleet evaluations ('auto', "
        "'ray://host:10001'); '' = local worker processes. Needs the `ray` "
        "extra (requirements/ray.txt).",
    )

    # --- background refresh of the chip gauges
    refresh_seconds: float = Field(15.0, ge=0, description="Period of the drift/accuracy gauge refresh (0 = off).")
    refresh_max_chips: int = Field(
        4,
        ge=1,
        le=10_000,
        description="Chips refreshed per period (round robin): bounds the refresher's CPU with many chips.",
    )
    refresh_cpu_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Largest share of one core the refresher uses over time: after a pass that "
        "computed for b seconds it waits at least b·(1/share − 1) s, beyond `refresh_seconds` "
        "(1 = no bound).",
    )
    refresh_eval_samples: int = Field(256, ge=1, description="Eval samples used for the refreshed accuracy gauges.")
    schedule_readouts: int = Field(
        3, ge=1, le=50, description="Read-outs averaged per age of the fixed evaluation schedule (1s … 10y)."
    )

    @field_validator("default_profile")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; known: {sorted(PRESETS)}")
        return v

    @field_validator("default_chip_id")
    @classmethod
    def _chip_id(cls, v: str) -> str:
        if not is_chip_id(v):
            raise ValueError(f"default_chip_id: {v!r} is not a valid chip id ({CHIP_ID_RULE})")
        return v

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, v: int) -> int:
        return v or int(DEFAULT_BUDGET_SHARE * memory_limit())

    @field_validator("binding")
    @classmethod
    def _binding(cls, v: str) -> str:
        if v not in ("initializers", "inputs"):
            raise ValueError("binding must be 'initializers' or 'inputs'")
        return v

    @field_validator("mvm_noise")
    @classmethod
    def _mvm_noise(cls, v: str) -> str:
        if v not in tuple(MvmNoiseSource):
            raise ValueError(f"mvm_noise must be one of {[s.value for s in MvmNoiseSource]}")
        if v == MvmNoiseSource.TABLE:
            logging.getLogger("agedchip.service").warning("AGEDCHIP_MVM_NOISE: %s", MVM_NOISE_TABLE_DEPRECATION)
            return MvmNoiseSource.FRESH.value
        return v

    @field_validator("batch_preferred_sizes")
    @classmethod
    def _preferred(cls, v: str) -> str:
        try:
            sizes = [int(p) for p in v.replace(" ", "").split(",") if p]
        except ValueError:
            raise ValueError(f"batch_preferred_sizes: {v!r} is not a comma-separated list of integers") from None
        return ",".join(map(str, sizes))

    @model_validator(mode="after")
    def _batching(self) -> Settings:
        try:
            self.batch_config()
        except BatchConfigError as err:
            name = "batch_max_queue_delay_ms" if err.field == "max_queue_delay_s" else f"batch_{err.field}"
            raise ValueError(f"{name}: {err}") from None
        return self

    def batch_config(self) -> BatchConfig:
        """The dynamic batching of inference requests (/infer and OIP) these settings describe."""
        return BatchConfig(
            max_queue_delay_s=self.batch_max_queue_delay_ms / 1000,
            max_size=min(self.batch_max_size, self.max_batch),
            preferred_sizes=tuple(int(p) for p in self.batch_preferred_sizes.split(",") if p),
        )

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError("log_level must be one of debug, info, warning, error, critical")
        return v

    @field_validator("api_key", "infer_api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v


def settings_table() -> str:
    """The settings as a Markdown table (for ``--help`` and the README)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default
        if isinstance(default, Path):
            default = str(default).replace(str(REPO_ROOT), "<repo>")
        rows.append(f"| `AGEDCHIP_{name.upper()}` | `{default}` | {f.description} |")
    return "\n".join(rows)
