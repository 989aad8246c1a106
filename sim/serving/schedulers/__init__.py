"""Scheduler models, one module per engine model, registered by the name users give (`vllm-v0`, `vllm-v1`), and
loading of a user's own class (`--scheduler package.module:ClassName`)."""

from __future__ import annotations

from sim.plugins import load_class
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
    return load_class(spec, SCHEDULERS, REQUIRED_METHODS, "scheduler", "sim.serving.schedulers.base.Scheduler")


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
