"""Replicas of the whole server behind Ray Serve (``troupe serve --ray``).

Two tiers: a thin ingress (:mod:`api.replicas.ingress`) reads each HTTP
request, derives its prompt-prefix hint (:mod:`api.replicas.prefix`) and calls
a model replica through a deployment handle, whose router
(:mod:`api.replicas.router`) keeps requests that share a prefix on the replica
that already holds it. Each replica (:mod:`api.replicas.deployment`) is a full
mlx-troupe server (its actors, its engine process, its prefix cache) run in
the replica's event loop by :mod:`api.replicas.bridge`.

Only the modules that need Ray import it; this package's ``__init__`` does not.
"""
