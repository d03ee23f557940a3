"""Shared fixtures: every async test runs on both anyio backends; one tiny model per session."""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.model.embedded import make_model
from actors.model.loader import LoadedModel, load_model


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each async test once on asyncio and once on trio."""
    backend: str = request.param
    return backend


@pytest.fixture(autouse=True, scope="module")
def collect_the_modules_garbage() -> Iterator[None]:
    """Collect garbage as each module ends.

    An object a module leaks in a reference cycle (a client's unclosed socket)
    then warns, and fails, in that module's last teardown, instead of in
    whichever later test the collector happens to run during.
    """
    yield
    gc.collect()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded ``tiny`` model (seed 0), generated once per session.

    Written under the session's temporary directory, never the user's cache, so
    tests neither depend on nor disturb ``~/.cache/mlx-troupe``. The directory
    is named ``tiny``, which is therefore the loaded model's display name.
    """
    return make_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def loaded_model(model_dir: Path) -> LoadedModel:
    """The session's tiny model loaded through :func:`actors.model.load_model`."""
    return load_model(str(model_dir))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--long``: the reliability scenarios at full scale (soak 20,000 requests, ...)."""
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the reliability scenarios at full scale (minutes, not seconds)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With ``--long``, the fuzz tests (sized at import) take ten times the examples.

    Servers the tests start keep MLX's bundled reference BLAS unless a test asks
    for ``--blas auto``: its results do not depend on the batch's shape, which
    the tests that compare batched and lone requests token for token rely on.
    """
    os.environ.setdefault("TROUPE_BLAS", "bundled")
    if config.getoption("--long"):
        os.environ.setdefault("TROUPE_FUZZ_SCALE", "10")


LONGEST_FIRST = (
    "test_ray_replicas.py",
    "test_ray_one_replica.py",
    "test_ray_serve_run.py",
    "test_engine_process.py",
    "test_shards.py",
    "test_contract.py",
    "test_soak.py",
    "test_reliability_cache.py",
    "test_api_limits.py",
    "test_reliability_crash.py",
    "test_generation.py",
    "test_resume.py",
    "test_real_model.py",
    "test_api_memory.py",
    "test_fuzz.py",
)
"""The files that take longest, longest first (measured; see ``make test``).

A parallel run hands whole files (and the Ray tests together) to its workers
in collection order (:mod:`tests.parallel`); starting the long ones first keeps
a worker from being left with one of them at the end while the other idles.
"""


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """A parallel run's scheduler: whole files, the Ray tests together (tests/parallel.py)."""
    from tests.parallel import FileScheduling  # noqa: PLC0415 - needs xdist, which runs this hook

    return FileScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first; the rest keep their order."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """Whether ``--long`` was given."""
    return bool(request.config.getoption("--long"))


FIGURES: dict[str, dict[str, object]] = {}
"""Figures the reliability tests measured, by test name (see ``figures``)."""


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, object]:
    """A test's measured figures: shown after the run, written to ``$TROUPE_FIGURES`` (JSON)."""
    recorded: dict[str, object] = {}
    FIGURES[request.node.name] = recorded
    return recorded


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the tests recorded; save them when ``TROUPE_FIGURES`` names a file."""
    shown = {name: values for name, values in FIGURES.items() if values}
    if not shown:
        return
    terminalreporter.section("reliability figures")
    for name, values in shown.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True)}")
    target = os.environ.get("TROUPE_FIGURES")
    if target:
        Path(target).write_text(json.dumps(shown, indent=2, sort_keys=True) + "\n")


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the run's status for :func:`pytest_unconfigure`."""
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without the interpreter's teardown, with the run's status.

    Tests run engines in this process; MLX's native threads can abort the
    interpreter's teardown ("terminate called without an active exception"),
    which would turn a green run into SIGABRT. Everything is reported by now.
    The server and the engine process end the same way for the same reason.
    """
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
