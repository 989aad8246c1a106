"""Records of a replay: per-iteration steps, per-request results, summaries, and how they are written."""
