"""The layout's rules: dependencies flow one way, and no generic module imports a specific one.

Read statically from every ``import`` in the tree (inside functions and
``TYPE_CHECKING`` blocks too: a lazy import is still a dependency). A rule
names a folder (or one module) and the packages of ours it may import; the
other direction needs no rule, since specific code may use generic code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.server import REPO

pytestmark = pytest.mark.timeout(30)

OURS = ("runtime", "actors", "api")

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    # The actor runtime knows nothing above it (and never MLX: see FORBIDDEN).
    "runtime": ("runtime",),
    "actors": ("runtime", "actors"),
    # The HTTP plumbing knows no API protocol (a protocol plugs its error shape in).
    "api/http": ("runtime", "actors", "api.http", "api.config"),
    "api/config": ("runtime", "actors", "api.config", "api.http.problems"),
    # The serving core speaks OpenAI's chat request (Messages and Responses
    # translate into it), and nothing else of a protocol: no writer, no route.
    "api/serving": (
        "runtime",
        "actors",
        "api.http",
        "api.config",
        "api.serving",
        "api.openai.request_types",
        "api.openai.bodies",
    ),
    "api/openapi/parts.py": ("api.http", "api.openapi.parts"),
    # The engine process's code never reaches back into the server's side.
    "actors/generation/engine": (
        "runtime",
        "actors.memory",
        "actors.kvcache",
        "actors.model",
        "actors.telemetry",
        "actors.generation.protocol",
        "actors.generation.engine",
        "actors.generation.shards",
    ),
}
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "runtime": ("mlx", "mlx_lm"),
    # The engine process holds the cache's store and its controls, not the actor.
    "actors/generation/engine": ("actors.kvcache.actor", "anyio"),
}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        match node:
            case ast.Import(names=names):
                found.update(alias.name for alias in names)
            case ast.ImportFrom(module=str(module), level=0):
                found.add(module)
            case _:
                pass
    return found


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def breaches(where: str, allowed: tuple[str, ...], forbidden: tuple[str, ...] = ()) -> list[str]:
    """``file: module`` for each import under ``where`` that its rule does not allow."""
    base = REPO / where
    files = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
    found = []
    for path in files:
        for module in sorted(imports_of(path)):
            ours = module.split(".")[0] in OURS
            if (ours and not _allowed(module, allowed)) or _allowed(module, forbidden):
                found.append(f"{path.relative_to(REPO)}: {module}")
    return found


@pytest.mark.parametrize("where", sorted(MAY_IMPORT))
def test_each_part_imports_only_what_its_rule_allows(where: str) -> None:
    assert (REPO / where).exists(), where
    assert breaches(where, MAY_IMPORT[where], FORBIDDEN.get(where, ())) == []


def test_the_check_finds_a_breach() -> None:
    """The check can fail: the app composes everything, so it breaks the serving rule."""
    assert "api/app.py: api.admin.audit_log" in breaches("api/app.py", MAY_IMPORT["api/serving"])


def test_every_api_folder_says_what_it_holds() -> None:
    """A newcomer finds a thing by its folder: each package's docstring says what is in it."""
    for init in sorted((REPO / "api").rglob("__init__.py")) + sorted(
        (REPO / "actors").rglob("__init__.py")
    ):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(REPO)} has no docstring"
