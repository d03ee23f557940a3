"""Several models in one server: which are loaded, and which to unload for another."""
