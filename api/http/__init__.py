"""HTTP plumbing every route shares: request and responder, middleware, problems, logs.

Tracing and the HTTP side of metrics are here too. Nothing here knows an API
protocol: a protocol plugs its own error shape in.
"""
