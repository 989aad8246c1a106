"""Scheduler models, one module per engine model, registered by the name users give (`vllm-v0`, `vllm-v1`), and
loading of a user's own class (`--scheduler package.module:ClassName`)."""

from __future__ import annotations

import importlib

from sim.errors import UserError
from sim.serving.schedulers.base import FastForwardScheduler, Scheduler, SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler
from sim.serving.schedulers.vllm_v1 import VllmV1Scheduler

SCHEDULERS: dict[str, type] = {cls.name: cls for cls in (VllmV0Scheduler, VllmV1Scheduler)}

#: The engine model replays use unless told otherwise: today's vLLM.
DEFAULT_SCHEDULER = VllmV1Scheduler.name

#: What the engine and the GPU harness call on a scheduler (see `Scheduler`).
REQUIRED_METHODS = ("add", "has_work", "next_waiting_final_len", "next_waiting_prefill_tokens", "schedule", "finish")


def resolve_scheduler(spec: str) -> type:
    """A registered name, or 'package.module:ClassName' for a user's own scheduler class (constructed as
    cls(allocator, limits, beam_model), with the attributes of `Scheduler`)."""
    if spec in SCHEDULERS:
        return SCHEDULERS[spec]
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(
            f"unknown scheduler {spec!r}; registered: {', '.join(SCHEDULERS)} "
            f"(or give your own class as package.module:ClassName)"
        )
    module_name, _, class_name = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not class_name.isidentifier():
        raise UserError(f"scheduler {spec!r} is not package.module:ClassName; registered: {', '.join(SCHEDULERS)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import scheduler module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself fails while importing: say so, without a traceback
        raise UserError(f"importing scheduler module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"scheduler {spec}: module {module_name!r} has no class {class_name!r}")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise UserError(f"scheduler {spec} lacks {', '.join(missing)} (see sim.serving.schedulers.base.Scheduler)")
    return cls


__all__ = [
    "DEFAULT_SCHEDULER",
    "REQUIRED_METHODS",
    "SCHEDULERS",
    "FastForwardScheduler",
    "Scheduler",
    "SchedulerLimits",
    "VllmV0Scheduler",
    "VllmV1Scheduler",
    "resolve_scheduler",
]
