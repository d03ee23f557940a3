"""A follower rank of a split model: its slice of the weights, and the leader's turns.

Started by the leader (:mod:`actors.generation.shards.group`) as ``python -m
actors.generation.shards.follower`` (here, or on another host over SSH) with
the leader's :class:`Boot` on standard input, which the leader then keeps
open (its end of file ends this process), and the ring in its environment. It loads the model as the
leader does, keeps its slice, and runs the same engine in lockstep with the
leader (:mod:`.lockstep`), emitting nothing: the leader answers. It ends with
the leader's stop turn (exit 0), and with anything that goes wrong (the leader
gone, a collective failed, an error of its own), which ends the leader too.

Its log lines go to standard error as JSON, warnings and worse only: the
leader reports everything about the group that an operator needs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import msgspec

from actors.generation.engine.batch_engine import Engine
from actors.generation.engine.lockstep import Lockstep
from actors.generation.engine.process_protocol import Boot
from actors.generation.engine.worker import EXIT_CRASHED, EXIT_LOAD_FAILED
from actors.generation.protocol import StreamEvent
from actors.generation.shards.group import die_with_parent, join_as_follower, shard_model
from actors.model.load_errors import ModelLoadError
from actors.model.loader import load_model
from actors.model.weights import fit_for_device, kv_bytes_per_token
from runtime.errors import describe_failure

log = logging.getLogger("troupe.engine")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created)),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
                "rank": os.environ.get("MLX_RANK"),
            }
        )


def _crashed(reason: str) -> None:
    log.error("shard engine crashed: %s", reason)
    logging.shutdown()
    os._exit(EXIT_CRASHED)


def _ignore(events: list[StreamEvent]) -> None:
    """A follower's events: the leader sends the same ones."""


def _read_boot() -> Boot:
    """The leader's :class:`Boot`, length-prefixed on standard input."""
    stdin = sys.stdin.buffer
    length = int.from_bytes(stdin.read(4), "little")
    return msgspec.msgpack.decode(stdin.read(length), type=Boot)


def _exit_when_leader_leaves() -> None:
    """The leader keeps our standard input open while it lives: its end means it is gone."""
    sys.stdin.buffer.read()
    logging.shutdown()
    os._exit(0)


def main() -> int:
    """Load this rank's slice and follow the leader's turns until the stop."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:
        return 0  # the leader ended before the death signal was armed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    boot = _read_boot()
    threading.Thread(target=_exit_when_leader_leaves, name="troupe-leader", daemon=True).start()
    group = join_as_follower()
    try:
        loaded = fit_for_device(
            load_model(boot.model), boot.engine.weights, boot.pressure.high_water
        )
        shard_model(loaded, group)
    except ModelLoadError as exc:
        log.error("shard could not load the model: %s", exc)
        return EXIT_LOAD_FAILED
    except Exception as exc:
        log.error("shard could not load the model: %s", describe_failure(exc))
        return EXIT_LOAD_FAILED
    # The leader measures its KV bytes per token with one forward pass before its
    # engine starts (see the worker): the same pass here, for its collectives.
    kv_bytes_per_token(loaded.model)
    engine = Engine(loaded, _ignore, _crashed, config=boot.engine, lockstep=Lockstep(group))
    engine.start()
    engine.join()
    return 0


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown with MLX's threads alive (see the worker)
