"""Choosing the BLAS that ``troupe serve`` preloads (the restart: tests/test_real_model.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.cli import blas

pytestmark = pytest.mark.timeout(60)


def test_bundled_preloads_nothing_and_a_path_is_taken_as_given(tmp_path: Path) -> None:
    assert blas.choose_blas("bundled") is None
    assert blas.choose_blas(str(tmp_path / "libblas.so")) == tmp_path / "libblas.so"


def test_auto_picks_a_loadable_candidate_on_a_cpu_build() -> None:
    chosen = blas.choose_blas("auto")
    if not blas.cpu_backend():
        assert chosen is None
        return
    assert chosen is None or (chosen in blas.candidates() and blas.loadable(chosen))


def test_a_library_that_does_not_load_is_not_loadable(tmp_path: Path) -> None:
    fake = tmp_path / "libmkl_rt.so.3"
    fake.write_bytes(b"\x7fELF but not really")
    assert not blas.loadable(fake)


def test_the_restarted_process_never_restarts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("must not exec")

    monkeypatch.setattr(os, "execve", refuse)
    monkeypatch.setenv(blas.PRELOADED_ENV, "/somewhere/libmkl_rt.so.3")
    blas.restart_with_blas("auto", ["serve"])
    monkeypatch.delenv(blas.PRELOADED_ENV)
    blas.restart_with_blas("bundled", ["serve"])


def test_mapped_libraries_are_read_from_the_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /venv/lib/libmkl_rt.so.3\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0\n"
        "7f04-7f05 r-xp 00000000 08:01 3 /usr/lib/libc.so.6\n"
        "7f06-7f07 rw-p 00000000 00:00 0 \n"
    )
    assert blas.mapped_blas(maps) == ["libblas-bd8a282c.so.3.10.0", "libmkl_rt.so.3"]
    assert blas.mapped_blas(tmp_path / "absent") == []
