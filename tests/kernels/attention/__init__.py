"""Tests of kernels.attention, one file per module (dispatch routing with the kernels it routes to)."""
