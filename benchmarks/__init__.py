"""Benchmarks: side-by-side measurements reported as ratios, never timed tests."""
