"""Cost models: how long one scheduler iteration takes (roofline formula, or a profile calibrated on a GPU)."""
