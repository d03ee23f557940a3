"""The metrics actor: request and lifecycle events in, snapshots and Prometheus text out."""
