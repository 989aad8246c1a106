"""Tests of kernels.tools."""
