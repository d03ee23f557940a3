"""Shared fixtures: every async test runs on both anyio backends; one tiny model per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.model import LoadedModel, load_model, make_model


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each async test once on asyncio and once on trio."""
    backend: str = request.param
    return backend


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
