"""Everything that runs in the engine process: the batch engine and the process's main.

This folder never imports anyio (tests/test_engine_imports.py checks every
module in it): the engine thread is plain Python over MLX, so a busy event loop
can never stall a decode step, and the engine process stays small.
"""
