"""The ``troupe`` command line: ``serve``, ``status``, ``check-config``, the BLAS preload."""
