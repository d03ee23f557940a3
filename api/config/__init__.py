"""The server's settings: the struct, its sources (TOML, flags, environment), the checks.

The models file (several models in one server) is read here too.
"""
