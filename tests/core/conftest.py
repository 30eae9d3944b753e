"""Fixtures of tests/core: checkpoints built once per session, a small aligned pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.geodata import difference_checkpoint, random_checkpoint, scene, write_tif


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("models") / "random.safetensors")


@pytest.fixture(scope="session")
def difference_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return difference_checkpoint(tmp_path_factory.mktemp("models") / "difference.safetensors")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A 160 x 160, 1 m, UTM 33N pair with one 60 x 60 change at rows/cols 40..100."""
    t1, t2 = scene()
    return write_tif(tmp_path / "t1.tif", t1), write_tif(tmp_path / "t2.tif", t2)
