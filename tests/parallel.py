"""How a parallel run (pytest-xdist, ``make test``) hands the tests to its workers.

Whole files go to one worker, so that a module-scoped server starts once; the
Ray tests (``test_ray_*.py``) go together to one worker, since each starts a
local Ray cluster and two at once would contend for Ray's ports. The files are
handed out in collection order, which ``tests/conftest.py`` sorts longest first.

xdist's own ``--dist loadgroup`` would express the Ray group with a mark, but it
tags the group onto ``item._nodeid``, which pytest 9.2 no longer reads, so the
grouping is decided here, on the controller, from the test ids alone.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling

RAY_GROUP = "ray"


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the Ray group."""
    path = nodeid.split("::", 1)[0]
    return RAY_GROUP if PurePosixPath(path).name.startswith("test_ray_") else path


class FileScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no types
    """xdist's scope scheduling with :func:`work_unit` as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)
