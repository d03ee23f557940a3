"""A model split over several processes: starting the group, and splitting the weights.

With ``shards`` > 1 in its :class:`~actors.generation.engine.engine_config.EngineConfig`,
the engine process (rank 0, the leader) starts the other ranks itself, running
:mod:`actors.generation.shards.follower`: as its children here, or over SSH on
the hosts ``shard_hosts`` names. It joins them in an ``mx.distributed`` ring:
each rank listens on a port of its own, named in a host file
(``MLX_HOSTFILE``) as ``mlx.launch`` writes it. Each rank loads the model and
keeps its slice (tensor parallelism, mlx-lm's ``model.shard``); then they run
one engine in lockstep (:mod:`.lockstep`).

The group lives and dies as one, which is what lets the server's existing
supervision restart it: the leader is the process the server watches, and

* a follower that exits, for whatever reason (its SSH client too), ends the
  leader at once (:func:`watch_follower`), so the server sees its engine
  process die and starts a new one, which starts a new group, and resumes the
  requests;
* a leader that dies takes its followers with it: each reads the end of the
  standard input the leader kept open (over SSH too), and the ring's
  connections fail.

This module never imports anyio.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import mlx.core as mx
import msgspec

from actors.generation.engine.process_protocol import Boot
from actors.model.load_errors import ModelLoadError
from actors.model.loader import LoadedModel

log = logging.getLogger("troupe.engine")

FOLLOWER_MODULE: Final = "actors.generation.shards.follower"
SSH: Final = ("ssh", "-o", "BatchMode=yes")
"""How a follower on another host is started: no password prompt (keys only), and
the ``ssh`` found on ``PATH``."""
EXIT_FOLLOWER_LOST: Final = 5
"""The leader's exit status when one of its followers ended first."""


class ShardGroup:
    """The leader's side: its followers' processes and the ring they joined."""

    def __init__(self, group: mx.distributed.Group, followers: list[subprocess.Popen[bytes]]):
        self.group = group
        self.followers = followers
        self.stopping = threading.Event()
        """Set while the leader ends on purpose: followers that exit are expected to."""

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for the followers (the stop turn ended them), then kill what is left."""
        self.stopping.set()
        for process in self.followers:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()


def start_group(boot: Boot) -> ShardGroup:
    """Start ``boot.engine.shards - 1`` followers and join the ring with them as rank 0."""
    config = boot.engine
    endpoints = ring_endpoints(config.shards, config.shard_hosts, config.shard_port)
    hostfile = _write_hostfile(endpoints)
    try:
        payload = msgspec.msgpack.encode(boot)
        followers = [
            _spawn_follower(rank, endpoints, hostfile, payload, config.shard_hosts)
            for rank in range(1, config.shards)
        ]
        group = ShardGroup(_join_ring(0, hostfile), followers)
    finally:
        hostfile.unlink(missing_ok=True)  # read by every rank once the ring is up
    for rank, process in enumerate(followers, start=1):
        threading.Thread(
            target=watch_follower,
            args=(group, rank, process),
            name=f"troupe-shard-{rank}",
            daemon=True,
        ).start()
    return group


def watch_follower(group: ShardGroup, rank: int, process: subprocess.Popen[bytes]) -> None:
    """End the leader as soon as the follower ends (unless the group is stopping)."""
    code = process.wait()
    if group.stopping.is_set():
        return
    log.error("shard %d of the model ended (exit %d); the group restarts", rank, code)
    logging.shutdown()
    os._exit(EXIT_FOLLOWER_LOST)


def check_splittable(loaded: LoadedModel, size: int) -> None:
    """Raise :class:`ModelLoadError` if the model cannot be split over ``size`` ranks.

    The leader checks before it starts its followers, so that the operator
    reads why (a follower would fail the same way, and its exit would end the
    leader before it could say).
    """
    model = loaded.model
    if not hasattr(model, "shard"):
        problem = f"its architecture cannot be split over {size} processes"
        raise ModelLoadError(loaded.name, [problem])
    args = getattr(model, "args", None)
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(args, name, None)
        if isinstance(value, int) and value % size:
            problem = f"{name} ({value}) is not a multiple of {size}, the processes to split over"
            raise ModelLoadError(loaded.name, [problem])


def shard_model(loaded: LoadedModel, group: mx.distributed.Group) -> None:
    """Keep this rank's slice of the weights (:class:`ModelLoadError` if they cannot be split)."""
    check_splittable(loaded, group.size())
    model = loaded.model
    model.shard(group)
    mx.eval(model.parameters())  # type: ignore[no-untyped-call]


def _join_ring(rank: int, hostfile: Path) -> mx.distributed.Group:
    os.environ["MLX_RANK"] = str(rank)
    os.environ["MLX_HOSTFILE"] = str(hostfile)
    return mx.distributed.init(strict=True, backend="ring")


def join_as_follower() -> mx.distributed.Group:
    """A follower's side: the ring its environment names (``MLX_RANK``, ``MLX_HOSTFILE``)."""
    return mx.distributed.init(strict=True, backend="ring")


def ring_endpoints(size: int, hosts: Sequence[str], port: int) -> list[str]:
    """Each rank's ``ip:port``: on ``hosts`` from ``port`` up, or free ports on loopback."""
    if hosts:
        return [f"{host}:{port + rank}" for rank, host in enumerate(hosts)]
    return [f"127.0.0.1:{free}" for free in _free_ports(size)]


def follower_command(
    rank: int, endpoints: list[str], hostfile: Path, hosts: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """How to start follower ``rank``: its command and environment.

    Here: this interpreter with the ring in its environment. On another host:
    SSH to it (as ``mlx.launch`` does: same interpreter path and working
    directory there), writing the host file there first.
    """
    follower = [sys.executable, "-m", FOLLOWER_MODULE]
    if not hosts:
        return follower, {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
    ring = shlex.quote(json.dumps([[endpoint] for endpoint in endpoints]))
    script = (
        f"cd {shlex.quote(os.getcwd())} && f=$(mktemp) && echo {ring} > $f && "
        f"export MLX_RANK={rank} MLX_HOSTFILE=$f && exec {shlex.join(follower)}"
    )
    return [*SSH, hosts[rank], script], dict(os.environ)


def _spawn_follower(
    rank: int, endpoints: list[str], hostfile: Path, boot: bytes, hosts: Sequence[str]
) -> subprocess.Popen[bytes]:
    command, env = follower_command(rank, endpoints, hostfile, hosts)
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=False,  # the leader's session: one signal reaches the group
    )
    assert process.stdin is not None
    # The pipe stays open: its end of file is how a follower (here or over SSH)
    # learns that its leader is gone, however it went.
    process.stdin.write(len(boot).to_bytes(4, "little") + boot)
    process.stdin.flush()
    return process


def _free_ports(count: int) -> list[int]:
    """Ports free on loopback now (the ring binds them a moment later)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_hostfile(endpoints: list[str]) -> Path:
    """The ring's host file: one list of ``ip:port`` per rank, as ``mlx.launch`` writes it."""
    handle, name = tempfile.mkstemp(prefix="troupe-ring-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump([[endpoint] for endpoint in endpoints], file)
    return Path(name)


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, even if it is stopped."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
