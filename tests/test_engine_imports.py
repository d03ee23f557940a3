"""The engine process never imports anyio, not even through a package ``__init__``.

Checked statically: every module of ours that ``python -m
actors.generation.engine.worker`` (or a split model's ``shard_follower``) executes
(its imports, their imports, and the ``__init__`` of every package on the
way), read for module-level imports outside ``if TYPE_CHECKING:`` blocks.
Third-party code (mlx-lm pulls in huggingface_hub, which may use anyio) is
not ours to police.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.server import REPO

pytestmark = pytest.mark.timeout(30)

OURS = ("actors", "runtime", "api")
FORBIDDEN = {"anyio", "sniffio", "trio", "asyncio"}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def executed_imports(path: Path, package: str) -> set[str]:
    """Modules imported when ``path`` runs (TYPE_CHECKING blocks and functions excluded)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            match node:
                case ast.Import(names=names):
                    found.update(alias.name for alias in names)
                case ast.ImportFrom(module=module, level=level, names=names):
                    base = _absolute(module, level, package)
                    found.add(base)
                    found.update(f"{base}.{alias.name}" for alias in names)
                case ast.If(test=ast.Name(id="TYPE_CHECKING")):
                    visit(node.orelse)
                case ast.If() | ast.Try():
                    visit(node.body)
                    visit(getattr(node, "orelse", []))
                    for handler in getattr(node, "handlers", []):
                        visit(handler.body)
                case _:
                    pass

    visit(ast.parse(path.read_text()).body)
    return found


def _absolute(module: str | None, level: int, package: str) -> str:
    if not level:
        return module or ""
    parts = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*parts, *([module] if module else [])])


def closure(root: str) -> dict[str, set[str]]:
    """Each of our modules the root executes, with what it imports."""
    seen: dict[str, set[str]] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen or not name.startswith(OURS):
            continue
        path = module_file(name)
        if path is None:
            continue  # an attribute imported from a module, not a module
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports = executed_imports(path, package)
        seen[name] = imports
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        pending.extend([*imports, *parents])
    return seen


@pytest.mark.parametrize(
    "root", ["actors.generation.engine.worker", "actors.generation.shards.follower"]
)
def test_the_engine_process_imports_no_event_loop_library(root: str) -> None:
    modules = closure(root)
    assert "actors.generation.engine.batch_engine" in modules
    assert "actors.generation.engine.lockstep" in modules
    assert "actors.kvcache" in modules  # the package __init__ is executed too
    offenders = {
        name: sorted(i for i in imports if i.split(".")[0] in FORBIDDEN)
        for name, imports in modules.items()
    }
    assert not {name: found for name, found in offenders.items() if found}
    assert not [name for name in modules if name.startswith("api")]


ENGINE_FOLDERS = ("actors/generation/engine", "actors/generation/shards")
"""The folders that run in engine processes: the no-event-loop rule is theirs."""


def _modules_in(folder: str) -> list[str]:
    base = REPO / folder
    names = [p.relative_to(REPO).with_suffix("") for p in sorted(base.rglob("*.py"))]
    return [".".join(n.parts[:-1] if n.name == "__init__" else n.parts) for n in names]


@pytest.mark.parametrize("folder", ENGINE_FOLDERS)
def test_no_module_in_the_engine_folders_imports_an_event_loop_library(folder: str) -> None:
    """A module added to these folders may be imported by the engine: it stays anyio-free."""
    modules = _modules_in(folder)
    assert len(modules) > 2, modules
    offenders = {
        name: sorted(i for i in imports if i.split(".")[0] in FORBIDDEN)
        for root in modules
        for name, imports in closure(root).items()
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_checker_sees_an_import_through_a_package_init() -> None:
    # The kv-cache actor does import anyio: reached from its package, it is found.
    modules = closure("actors.kvcache.actor")
    assert "anyio" in modules["actors.kvcache.actor"]
