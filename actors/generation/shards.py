"""A model split over several processes on this machine: starting the group, and splitting.

With ``shards`` > 1 in its :class:`~actors.generation.engine_config.EngineConfig`,
the engine process (rank 0, the leader) starts the other ranks itself, as
children running :mod:`actors.generation.shard_follower`, and joins them in
an ``mx.distributed`` ring over loopback: each rank listens on a port of its
own, named in a host file (``MLX_HOSTFILE``) as ``mlx.launch`` writes it. Each
rank loads the model and keeps its slice (tensor parallelism, mlx-lm's
``model.shard``); then they run one engine in lockstep (:mod:`.lockstep`).

The group lives and dies as one, which is what lets the server's existing
supervision restart it: the leader is the process the server watches, and

* a follower that exits, for whatever reason, ends the leader at once
  (:func:`watch_followers`), so the server sees its engine process die and
  starts a new one, which starts a new group, and resumes the requests;
* a leader that dies takes its followers with it (the kernel's parent-death
  signal on Linux, the ring's lost connection everywhere).

This module never imports anyio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Final

import mlx.core as mx
import msgspec

from actors.generation.process_protocol import Boot
from actors.model.load_errors import ModelLoadError
from actors.model.loader import LoadedModel

log = logging.getLogger("troupe.engine")

FOLLOWER_MODULE: Final = "actors.generation.shard_follower"
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


def start_group(boot: Boot) -> ShardGroup:
    """Start ``boot.engine.shards - 1`` followers and join the ring with them as rank 0."""
    size = boot.engine.shards
    hostfile = _write_hostfile(_free_ports(size))
    try:
        payload = msgspec.msgpack.encode(boot)
        followers = [_spawn_follower(rank, hostfile, payload) for rank in range(1, size)]
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


def _spawn_follower(rank: int, hostfile: Path, boot: bytes) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
    process = subprocess.Popen(
        [sys.executable, "-m", FOLLOWER_MODULE],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=False,  # the leader's session: one signal reaches the group
    )
    assert process.stdin is not None
    with contextlib.closing(process.stdin):
        process.stdin.write(boot)
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


def _write_hostfile(ports: list[int]) -> Path:
    """The ring's host file: one list of ``ip:port`` per rank, as ``mlx.launch`` writes it."""
    handle, name = tempfile.mkstemp(prefix="troupe-ring-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump([[f"127.0.0.1:{port}"] for port in ports], file)
    return Path(name)
