"""Generation: continuous batching over an MLX model, in an engine process or on a thread."""
