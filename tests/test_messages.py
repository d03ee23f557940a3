"""Every message type round-trips through msgpack, and unions decode by tag."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors
import api
import runtime
from runtime import Message, decode, encode, message_types
from runtime.lifecycle import Crashed, Event, Started

pytestmark = pytest.mark.timeout(60)


def _import_all() -> list[type[Message]]:
    """Import every module of the project so every message class is defined."""
    for package in (runtime, actors, api):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    return message_types()


ALL_TYPES = _import_all()


_STRUCTS: dict[type, st.SearchStrategy[Any]] = {}


def strategy_for(info: mi.Type) -> st.SearchStrategy[Any]:  # noqa: PLR0911, PLR0912 - a case per type
    """Values of a msgspec type, every struct field drawn (defaults too).

    Built from msgspec's own type description rather than ``st.from_type``,
    which would pass msgspec's default-factory marker through as a value.
    """
    match info:
        case mi.StructType(cls=cls, fields=fields):
            # Deferred and shared per class, so recursive types (a status tree) terminate.
            if cls not in _STRUCTS:
                _STRUCTS[cls] = st.deferred(
                    lambda: st.builds(cls, **{f.name: strategy_for(f.type) for f in fields})
                )
            return _STRUCTS[cls]
        case mi.DataclassType(cls=cls, fields=fields):
            # Settings carried inside a message (the engine process's Boot): their
            # defaults, and small counts where a field has none.
            required = {f.name: st.integers(0, 2**40) for f in fields if f.required}
            return st.builds(_valid, st.just(cls), st.fixed_dictionaries(required)).filter(
                lambda value: value is not None
            )
        case mi.UnionType(types=types):
            return st.one_of(*(strategy_for(t) for t in types))
        case mi.ListType(item_type=item):
            return st.lists(strategy_for(item), max_size=4)
        case mi.VarTupleType(item_type=item):
            return st.lists(strategy_for(item), max_size=4).map(tuple)
        case mi.TupleType(item_types=items):
            return st.tuples(*(strategy_for(item) for item in items))
        case mi.BytesType():
            return st.binary(max_size=16)
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(strategy_for(key), strategy_for(value), max_size=4)
        case mi.EnumType(cls=enum_cls):
            return st.sampled_from(enum_cls)
        case mi.LiteralType(values=values):
            return st.sampled_from(values)
        case mi.IntType():
            return st.integers(min_value=-(2**63), max_value=2**63 - 1)  # msgpack's range
        case mi.FloatType():
            return st.floats()
        case mi.StrType():
            return st.text()
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
    raise AssertionError(f"add a strategy for {info!r}")


def _valid(cls: type, fields: dict[str, Any]) -> Any:
    """``cls(**fields)``, or ``None`` where its own checks refuse them."""
    try:
        return cls(**fields)
    except ValueError:
        return None


def test_the_registry_sees_the_system_messages() -> None:
    names = {cls.__name__ for cls in ALL_TYPES}
    assert {"Started", "Crashed", "Restarted", "Stopped", "Escalated"} <= names
    assert {"ActorStatus", "SupervisorStatus", "SystemStatus", "Failure"} <= names


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_message_round_trips_through_msgpack(cls: type[Message], data: st.DataObject) -> None:
    original = data.draw(strategy_for(mi.type_info(cls)))
    wire = encode(original)
    restored: Message = decode(wire, cls)
    assert type(restored) is cls
    # Compare encodings rather than objects: NaN never equals itself.
    assert encode(restored) == wire


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__qualname__)
def test_every_message_is_frozen_and_tagged(cls: type[Message]) -> None:
    config = cls.__struct_config__
    assert config.frozen
    assert config.tag == cls.__name__


def test_a_union_of_events_decodes_to_the_right_class() -> None:
    events: list[Event] = [
        Started(path="root/a", at=1.0, incarnation=1),
        Crashed(path="root/a", at=2.0, reason="RuntimeError"),
    ]
    wire = msgspec.msgpack.encode(events)
    assert msgspec.msgpack.decode(wire, type=list[Event]) == events
