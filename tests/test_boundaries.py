"""With the engine in its own process, no object is shared between actors, or with the api.

The check walks what each child of the tree is built from (its factory's
closure, recursively through our own objects and containers) and what the
HTTP application holds, and asserts that no mutable object of ours is reachable
from two of them. Frozen values (settings, messages) may be shared: they are
data. The one shared service allowed is the system's lifecycle bus, which the
actor system itself publishes on.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.tree import Inference, build_inference, build_process_inference
from api.app import TroupeApp
from api.cli.serve import inference_settings, model_loader
from api.config.settings import Settings
from runtime import SupervisorSpec
from runtime.events import EventBus

pytestmark = pytest.mark.timeout(30)

OURS = ("actors", "api", "runtime")
ALLOWED = (EventBus,)
"""The lifecycle bus belongs to the actor system; actors subscribe to it."""


def _is_ours(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] in OURS


def _frozen(obj: object) -> bool:
    if isinstance(obj, msgspec.Struct):
        return bool(type(obj).__struct_config__.frozen)
    params = getattr(type(obj), "__dataclass_params__", None)
    return params is not None and bool(params.frozen)


def _children(obj: object) -> Iterator[object]:
    """What ``obj`` refers to that the walk follows."""
    if isinstance(obj, functools.partial):
        yield obj.func
        yield from obj.args
        yield from obj.keywords.values()
    elif isinstance(obj, types.FunctionType):
        yield from (cell.cell_contents for cell in obj.__closure__ or () if _has_contents(cell))
        yield from obj.__defaults__ or ()
        yield from (obj.__kwdefaults__ or {}).values()
    elif hasattr(obj, "__func__") and hasattr(obj, "__self__"):  # a bound method
        yield obj.__self__
    elif isinstance(obj, list | tuple | set | frozenset):
        yield from obj
    elif isinstance(obj, dict):
        yield from obj.values()
    elif _is_ours(obj):
        if dataclasses.is_dataclass(obj):
            yield from (getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif isinstance(obj, msgspec.Struct):
            yield from (getattr(obj, name) for name in obj.__struct_fields__)
        else:
            yield from vars(obj).values() if hasattr(obj, "__dict__") else ()


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def reachable(root: object, *, skip: tuple[type, ...] = ()) -> dict[int, object]:
    """Mutable objects of ours reachable from ``root``, by id (``skip``: not followed)."""
    seen: set[int] = set()
    found: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, *skip)):
            continue
        seen.add(id(obj))
        if _is_ours(obj) and not _frozen(obj) and not callable(obj):
            found[id(obj)] = obj
        stack.extend(_children(obj))
    return found


def shared_between(named: dict[str, dict[int, object]]) -> list[str]:
    """``"a & b: Type"`` for each mutable object reachable from two of ``named``."""
    owners: dict[int, list[str]] = {}
    for name, objects in named.items():
        for ident, obj in objects.items():
            if not isinstance(obj, ALLOWED):
                owners.setdefault(ident, []).append(name)
    every = {ident: obj for objects in named.values() for ident, obj in objects.items()}
    return sorted(
        f"{' & '.join(names)}: {type(every[ident]).__name__}"
        for ident, names in owners.items()
        if len(names) > 1
    )


def parts(inference: Inference, settings: Settings) -> dict[str, dict[int, object]]:
    """Each child of the tree, and the HTTP application, as the objects it reaches."""
    named = {spec.id: reachable(spec.factory) for spec in _workers(inference.spec)}
    app = TroupeApp(settings, inference)
    # The app starts the system from the spec; what it holds besides is its own.
    named["api"] = reachable(app, skip=(SupervisorSpec, Inference))
    return named


def _workers(spec: SupervisorSpec) -> Iterator[Any]:
    for child in spec.children:
        if isinstance(child, SupervisorSpec):
            yield from _workers(child)
        else:
            yield child


def test_the_process_tree_and_the_api_share_no_object(model_dir: Path) -> None:
    settings = Settings(model=str(model_dir), port=0)
    inference = build_process_inference(str(model_dir), inference_settings(settings))
    named = parts(inference, settings)
    assert set(named) == {"metrics", "intake", "generation", "kvcache", "engine", "api"}
    assert shared_between(named) == []


def test_the_walk_finds_what_the_thread_tree_shares(model_dir: Path) -> None:
    """The check can fail: the in-process shape shares the cache and the weights."""
    settings = Settings(model=str(model_dir), port=0, engine="thread")
    inference = build_inference(model_loader(settings), inference_settings(settings))
    found = shared_between(parts(inference, settings))
    cache = [line for line in found if line.endswith(": PrefixCache")]
    assert cache and "generation" in cache[0] and "kvcache" in cache[0], found
    assert "generation & api: ModelHost" in found, found
