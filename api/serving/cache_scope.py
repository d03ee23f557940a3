"""Which prefix-cache namespace a request reads and writes.

A cached prompt prefix makes a repeat of that prompt answer sooner, so
sharing the cache between tenants would tell any of them whether another sent
a given text (the prefix-cache timing attack). Each tenant therefore gets a
namespace of its own, split further by the request's ``cache_salt`` (vLLM's
field) when it sends one; a server without keys and a request without a salt
keep the one shared namespace ``""``. The namespace is a digest, so neither
the tenant nor the salt travels to the engine or into persisted files.
"""

from __future__ import annotations

import hashlib


def cache_namespace(tenant: str | None, salt: str | None) -> str:
    """The namespace of ``tenant``'s requests that carry ``salt``."""
    if tenant is None and salt is None:
        return ""
    digest = hashlib.blake2b(digest_size=16, person=b"troupe-kv-scope")
    for part in (tenant, salt):
        # Length-prefixed, so that no two (tenant, salt) pairs spell the same bytes.
        data = b"-" if part is None else b"+" + part.encode()
        digest.update(len(data).to_bytes(4, "big") + data)
    return digest.hexdigest()
