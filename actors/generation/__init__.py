"""The generation actor: continuous batching over an MLX model on its own thread."""
