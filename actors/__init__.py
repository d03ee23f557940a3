"""mlx-troupe's inference actors (generation, kv-cache, intake, metrics)."""
