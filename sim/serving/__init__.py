"""Serving policy: requests, intake, scheduler models, and the simulator's engine that drives them."""
