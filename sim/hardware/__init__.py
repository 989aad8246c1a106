"""Hardware: model descriptions, GPU presets and the KV-cache budget they leave."""
