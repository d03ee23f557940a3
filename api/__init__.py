"""mlx-troupe's HTTP front door and command line."""
