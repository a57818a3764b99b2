"""The default chip: the zoo's default model, programmed at start-up when the store lacks it."""

from __future__ import annotations

import logging

from service.problems import Problem
from service.program_request import ProgramSpec
from service.registry import Registry
from service.settings import Settings

log = logging.getLogger("agedchip.service")


def program_default_chip(registry: Registry, settings: Settings) -> None:
    """Program the zoo's default model as chip `default_chip_id` when the store has no such chip."""
    if not settings.default_model or registry.read_only:  # a replica only serves what the writer made
        return
    chip_id = settings.default_chip_id
    if chip_id in registry.corrupt():
        log.warning("default chip %r is corrupt; not re-programming it (delete it to get a fresh one)", chip_id)
        return
    if any(c.chip_id == chip_id for c in registry.ready()):
        return
    if settings.default_model not in registry.zoo.names():
        log.warning(
            "default model %r is not in the zoo at %s; no default chip (POST /program to create chips)",
            settings.default_model,
            settings.zoo_dir,
        )
        return
    try:
        registry.program(
            ProgramSpec(
                zoo_model=settings.default_model,
                chip_id=chip_id,
                preset=settings.default_profile,
                seed=settings.default_seed,
                time_scale=settings.default_time_scale,
            )
        )
        log.info(
            "programmed the default chip %r from zoo model %r (%s, time scale %g)",
            chip_id,
            settings.default_model,
            settings.default_profile,
            settings.default_time_scale,
        )
    except Problem as err:
        log.error("could not program the default chip: %s", err.message)
    except Exception:
        log.exception("could not program the default chip")
