"""``troupe bench``: mlx-troupe side by side with ``mlx_lm.server`` over HTTP.

One concept per module: :mod:`.loadgen` (the HTTP load generator and its
outcomes), :mod:`.servers` (starting and stopping the servers compared),
:mod:`.scenarios` (what is sent), :mod:`.stats` (figures from outcomes),
:mod:`.environment` (what the figures were measured on), :mod:`.report` and
:mod:`.charts` (what is written), :mod:`.runner` (the order of things),
:mod:`.cli` (the command line) and :mod:`.instant` (a server that answers at
once, for the load generator's own ceiling and for tests).
"""
