"""Scheduler models, one module per engine model, registered by the name users give (`vllm-v0`)."""

from sim.serving.schedulers.base import FastForwardScheduler, Scheduler, SchedulerLimits
from sim.serving.schedulers.vllm_v0 import VllmV0Scheduler

SCHEDULERS: dict[str, type] = {VllmV0Scheduler.name: VllmV0Scheduler}

__all__ = ["SCHEDULERS", "FastForwardScheduler", "Scheduler", "SchedulerLimits", "VllmV0Scheduler"]
