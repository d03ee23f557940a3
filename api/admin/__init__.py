"""The operator's side: health, status, the audit log and its feed, faults, live settings.

The console's static files are in ``console/``.
"""
