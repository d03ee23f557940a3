"""One engine over several processes: every rank runs the same turns, rank 0 decides them.

A model split by tensor parallelism (``mx.distributed``, mlx-lm's
``model.shard``) computes each forward pass on every rank at once: the ranks
must run the same batch, step for step, or their collectives hang or mix
requests. So each rank runs the same :class:`~actors.generation.engine.batch_engine.Engine`
and they share its only inputs. At the start of every turn of the engine loop
rank 0 (the *leader*, the process the server talks to) broadcasts a
:class:`Turn`: the commands it took from its queue (new requests,
cancellations, the stop) and its clock, which decides deadlines. The other
ranks (*followers*) wait for it and apply the same commands at the same turn.
Everything else an engine does follows from its inputs: the same requests,
admitted in the same order, give the same batches; the logits after each
``all_sum`` are the same bits on every rank, and sampling draws from an MLX
random state seeded alike on every rank (:meth:`Lockstep.seed_alike`), so
every rank picks the same tokens. Only the leader emits events.

What would differ between ranks is left out of a split engine: a prefix cache
(the leader's hits would be its own), and recovery from an allocation failure
on one rank alone. A rank that fails ends its process; the collectives then
fail on every rank ("connection to a peer was lost"), and the group is
restarted as a whole (see :mod:`actors.generation.shards.group`).

This module never imports anyio: it runs on the engine thread.
"""

from __future__ import annotations

import queue
import secrets
import time
from typing import Final

import mlx.core as mx
import msgspec
import numpy as np

from actors.generation.protocol import Cancel, Embed, Generate
from runtime import Message

INLINE_BYTES: Final = 4096
"""A turn this small (most are: no command, or a short prompt) takes one collective."""
_LENGTH_BYTES: Final = 4


class StopEngine(Message, frozen=True, kw_only=True):
    """The engine loop ends (the server is stopping)."""


Command = Generate | Embed | Cancel | StopEngine


class Turn(Message, frozen=True, kw_only=True):
    """What every rank applies before its next step."""

    now: float
    """The leader's wall clock (seconds since the epoch): deadlines are checked against it."""
    commands: list[Command] = msgspec.field(default_factory=list)


class Lockstep:
    """This rank's side of the turns: the leader sends them, followers receive them."""

    def __init__(self, group: mx.distributed.Group) -> None:
        self._group = group
        self._decoder = msgspec.msgpack.Decoder(Turn)

    @property
    def rank(self) -> int:
        """This process's rank (0: the leader)."""
        return int(self._group.rank())

    @property
    def size(self) -> int:
        """Ranks in the group."""
        return int(self._group.size())

    @property
    def leads(self) -> bool:
        """Whether this rank decides the turns."""
        return self.rank == 0

    def seed_alike(self) -> None:
        """Seed MLX's random state the same on every rank (the leader draws the seed)."""
        seed = secrets.randbits(32) if self.leads else 0
        mx.random.seed(int.from_bytes(self._broadcast(seed.to_bytes(4, "little")), "little"))

    def share(self, turn: Turn | None) -> Turn:
        """The leader's ``turn``, on every rank (followers pass ``None`` and wait for it)."""
        if self.leads:
            assert turn is not None
            self._broadcast(msgspec.msgpack.encode(turn))
            return turn
        return self._decoder.decode(self._broadcast(None))

    def _broadcast(self, data: bytes | None) -> bytes:
        """The leader's ``data`` on every rank: a sum where only the leader adds anything.

        The first collective carries the length and, when it fits, the data
        itself; a longer turn takes a second one.
        """
        head = np.zeros(INLINE_BYTES, dtype=np.uint8)
        if data is not None:
            head[:_LENGTH_BYTES] = np.frombuffer(len(data).to_bytes(4, "little"), dtype=np.uint8)
            inline = data[: INLINE_BYTES - _LENGTH_BYTES]
            head[_LENGTH_BYTES : _LENGTH_BYTES + len(inline)] = np.frombuffer(inline, np.uint8)
        summed = self._sum(head)
        length = int.from_bytes(summed[:_LENGTH_BYTES].tobytes(), "little")
        if length <= INLINE_BYTES - _LENGTH_BYTES:
            return summed[_LENGTH_BYTES : _LENGTH_BYTES + length].tobytes()
        body = np.zeros(length, dtype=np.uint8)
        if data is not None:
            body[:] = np.frombuffer(data, dtype=np.uint8)
        return self._sum(body).tobytes()

    def _sum(self, values: np.ndarray) -> np.ndarray:
        total = mx.distributed.all_sum(mx.array(values), group=self._group)
        mx.eval(total)
        return np.array(total, dtype=np.uint8)


class Turns:
    """Where an engine's commands come from, a turn at a time: its queue, or its leader."""

    def __init__(self, lockstep: Lockstep | None) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._lockstep = lockstep

    def put(self, command: Command) -> None:
        """Queue ``command`` for the next turn (thread-safe; a follower's are never read)."""
        self._queue.put(command)

    def next(self, block: bool) -> Turn:
        """The next turn: the queued commands (waiting for one when ``block``), and the clock.

        A split engine's leader shares its turn; a follower waits for the
        leader's instead of reading its own queue.
        """
        lockstep = self._lockstep
        if lockstep is not None and not lockstep.leads:
            return lockstep.share(None)
        turn = Turn(now=time.time(), commands=self._take(block))
        return turn if lockstep is None else lockstep.share(turn)

    def _take(self, block: bool) -> list[Command]:
        commands: list[Command] = []
        while True:
            try:
                commands.append(self._queue.get(block=block and not commands))
            except queue.Empty:
                return commands
