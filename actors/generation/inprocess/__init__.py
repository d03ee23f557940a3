"""The generation actor with the engine on a thread of the server (``--engine thread``)."""
