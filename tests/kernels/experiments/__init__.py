"""Tests of kernels.experiments (the arithmetic of the kept experiments, on tiny CPU shapes)."""
