"""The model keeper's decisions and the models file, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.models.keeper import KeptModel, ModelBook
from actors.models.protocol import ModelPhase
from api.config.checks import check_settings
from api.config.models_file import DEFAULT_KEEP_ALIVE, ModelsFileError, read_models_file
from api.config.settings import Settings
from tests.test_config import check_config

pytestmark = pytest.mark.timeout(60)

MIB = 2**20


def book(budget: int | None, *names: str, keep_alive: float | None = 60.0) -> ModelBook:
    return ModelBook([KeptModel(name, keep_alive, 100 * MIB) for name in names], budget)


def load(kept: ModelBook, name: str, last_used: float, in_flight: int = 0) -> None:
    slot = kept.slots[name]
    slot.phase, slot.last_used, slot.in_flight = ModelPhase.LOADED, last_used, in_flight


def test_the_least_recently_used_idle_model_makes_room() -> None:
    kept = book(250 * MIB, "a", "b", "c")
    load(kept, "a", last_used=2.0)
    load(kept, "b", last_used=1.0)
    assert kept.room_for("c", now=3.0) == ["b"]


def test_a_busy_model_is_never_unloaded_to_make_room() -> None:
    kept = book(250 * MIB, "a", "b", "c")
    load(kept, "a", last_used=2.0)
    load(kept, "b", last_used=1.0, in_flight=1)
    assert kept.room_for("c", now=3.0) == ["a"]
    load(kept, "a", last_used=2.0, in_flight=2)
    assert kept.room_for("c", now=3.0) == []  # nothing idle: loaded anyway, intake sheds


def test_room_is_made_only_when_needed_and_never_without_a_budget() -> None:
    assert book(None, "a", "b").room_for("b", now=0.0) == []
    kept = book(300 * MIB, "a", "b", "c")
    load(kept, "a", last_used=0.0)
    load(kept, "b", last_used=0.0)
    assert kept.room_for("c", now=1.0) == []
    kept.slots["c"].weights_bytes = 150 * MIB  # measured bigger than its files
    assert len(kept.room_for("c", now=1.0)) == 1


def test_keep_alive_unloads_idle_models_only() -> None:
    kept = book(None, "a", "b", "c")
    load(kept, "a", last_used=0.0)
    load(kept, "b", last_used=0.0, in_flight=1)
    load(kept, "c", last_used=100.0)
    assert kept.idle_past_keep_alive(now=61.0) == ["a"]
    forever = book(None, "d", keep_alive=None)
    load(forever, "d", last_used=0.0)
    assert forever.idle_past_keep_alive(now=1e9) == []


def test_the_idle_clock_starts_when_a_load_ends_not_when_it_was_asked_for() -> None:
    kept = book(None, "a", keep_alive=60.0)
    kept.slots["a"].last_used = 0.0  # wanted at 0; the load took 100 s
    kept.slots["a"].phase = ModelPhase.LOADING
    kept.loaded("a", 120 * MIB, now=100.0)
    assert kept.idle_past_keep_alive(now=101.0) == []
    assert kept.idle_past_keep_alive(now=160.0) == ["a"]
    assert (kept.slots["a"].loads, kept.slots["a"].weights_bytes) == (1, 120 * MIB)


def test_the_report_names_every_model_with_its_phase() -> None:
    kept = book(200 * MIB, "a", "b")
    load(kept, "a", last_used=0.0)
    report = kept.report(now=5.0)
    assert [(m.name, m.phase, m.idle_seconds) for m in report.models] == [
        ("a", ModelPhase.LOADED, 5.0),
        ("b", ModelPhase.UNLOADED, None),
    ]
    assert report.budget_bytes == 200 * MIB


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_models_file_reads_with_its_defaults(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    path = write(
        tmp_path / "models.toml",
        """
memory_budget = 1_000_000
[[model]]
name = "one"
path = "local"
[[model]]
name = "two.v2"
path = "owner/name"
keep_alive = -1
preload = true
weights = "float32"
[[model]]
name = "three"
path = "embedded"
""",
    )
    read = read_models_file(path, embedded="/generated")
    one, two, three = read.models
    assert read.memory_budget == 1_000_000
    assert (one.source, one.keep_alive, one.preload) == (
        str(tmp_path / "local"),
        DEFAULT_KEEP_ALIVE,
        False,
    )
    assert (two.source, two.keep_alive, two.preload, two.weights) == (
        "owner/name",
        None,
        True,
        "float32",
    )
    assert three.source == "/generated"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "`model`"),
        ("model = []", "names no model"),
        ('[[model]]\nname = "a"\npath = "x"\n[[model]]\nname = "a"\npath = "y"', "used twice"),
        ('[[model]]\nname = "a b"\npath = "x"', "must be 1-64 letters"),
        ('[[model]]\nname = "a"\npath = ""', "path is empty"),
        ('[[model]]\nname = "a"\npath = "x"\nsize = 3', "size"),
        ('[[model]]\nname = "a"\npath = "x"\nkeep_alive = -5', "keep_alive"),
        ("[[[ not toml", "not valid TOML"),
    ],
)
def test_a_bad_models_file_says_what_is_wrong(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ModelsFileError, match=said.replace("[", r"\[")):
        read_models_file(write(tmp_path / "models.toml", text))


def test_an_unreadable_models_file_does_not_show_its_path(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError) as raised:
        read_models_file(tmp_path / "absent.toml")
    assert str(tmp_path) not in str(raised.value)


def test_model_and_models_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.toml", '[[model]]\nname = "a"\npath = "x"\n')
    problems = check_settings(Settings(model="x", models=str(path)), probe_port=False)
    assert any(p.setting == "model" and "models" in p.message for p in problems)
    threaded = check_settings(Settings(engine="thread", models=str(path)), probe_port=False)
    assert any(p.setting == "engine" for p in threaded)


def test_check_config_reports_a_bad_models_file_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path / "m.toml", '[[model]]\nname = "a"\n')
    result = check_config("--models", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "model[0]" in result.stderr and "path" in result.stderr
