"""The protocol-neutral core: one generating request from admission to its last byte.

A request of any protocol becomes a job (prompt, grammar, tools, choices); the
pipeline admits it, runs its choices on the engine, and hands each event to the
protocol's reply writer. Outcomes go to metrics, the audit log and the log.
"""
