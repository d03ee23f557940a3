"""The server side of an engine process: the engine actor that owns the process, and the router.

The router is the generation actor when the engine runs in its own process: it
keeps every request across engine deaths and replays what was not delivered.
"""
