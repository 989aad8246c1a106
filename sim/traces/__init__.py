"""Traces: the in-memory trace, readers per format, generators and tools."""
