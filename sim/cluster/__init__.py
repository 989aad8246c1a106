"""Clusters: replicas behind a router on one clock, optionally split into prefill and decode pools (`sim cluster`)."""
