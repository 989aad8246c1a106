"""Scheduler models, one module per engine model."""
