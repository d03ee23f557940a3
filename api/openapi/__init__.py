"""``GET /openapi.json``: the served API, described from the msgspec types that decode it."""
