"""One model split over several processes: starting the group, and a follower rank's loop.

Followers run in engine processes, so this folder never imports anyio either.
"""
