"""Generation: continuous batching over an MLX model.

``engine/`` is the batch engine and the engine process's main; ``supervised/``
runs it in its own process (the default) and ``inprocess/`` on a thread of the
server (``--engine thread``); ``shards/`` splits one model over several
processes. ``protocol`` is what the rest of the server says to the generation
actor, and ``client`` how it asks for a stream.
"""
