"""Detection on Dask: a local cluster and an existing scheduler give the single-process
outputs; unusable clusters and models are refused in one sentence, leaving nothing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from distributed import LocalCluster

from kdmsi_core import detect
from kdmsi_core.checkpoint import default_model_path
from kdmsi_core.distributed import Job, blocks, file_digest, run_block
from kdmsi_core.engine import load_engine
from kdmsi_core.errors import CheckpointError, ParameterError
from kdmsi_core.inference import local_results
from kdmsi_core.normalize import Normalization
from kdmsi_core.raster import RasterPair
from kdmsi_core.refine import Refinement
from kdmsi_core.tiling import Tile, plan_tiles
from kdmsi_train.synth import make_scene_pair, write_scene_pair
from tests.core.geodata import scene, write_tif

KDMSI = Path(sys.executable).with_name("kdmsi-geo")
CHANGES = ((40, 40, 100, 100), (300, 200, 420, 330), (610, 500, 690, 590))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _polygons(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    _, _, wkb, fields = pyogrio.raw.read(path, layer="changes")
    return shapely.from_wkb(wkb), fields


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Probability within 1e-5 with the same nodata; the same polygons and attributes."""
    pa, pb = _read(a.with_name(f"{a.stem}_probability.tif")), _read(
        b.with_name(f"{b.stem}_probability.tif"))
    assert np.array_equal(pa == -1, pb == -1)
    assert np.abs(pa - pb).max() <= 1e-5
    (ga, fa), (gb, fb) = _polygons(a), _polygons(b)
    assert len(ga) == len(gb) > 0
    order_a, order_b = np.argsort(shapely.area(ga)), np.argsort(shapely.area(gb))
    for x, y in zip(ga[order_a], gb[order_b], strict=True):
        assert shapely.symmetric_difference(x, y).area < 1e-6
    for col_a, col_b in zip(fa, fb, strict=True):
        np.testing.assert_allclose(col_a[order_a], col_b[order_b], atol=1e-5)


@pytest.fixture
def big_pair(tmp_path: Path) -> tuple[Path, Path]:
    """700 x 600 px, three changes, so that a 96 px tiling makes many blocks."""
    t1, t2 = scene((700, 600), seed=3, changes=CHANGES)
    return write_tif(tmp_path / "t1.tif", t1), write_tif(tmp_path / "t2.tif", t2)


def test_local_cluster_gives_the_single_process_outputs(tmp_path: Path, big_pair,
                                                        difference_model: Path) -> None:
    kwargs = {"model": difference_model, "tile_size": 96, "overlap": 32}
    one = detect(*big_pair, tmp_path / "one.gpkg", **kwargs)
    two = detect(*big_pair, tmp_path / "two.gpkg", workers=2, **kwargs)
    assert one.polygons == two.polygons == len(CHANGES)
    assert two.changed_area_m2 == pytest.approx(one.changed_area_m2)
    _assert_same_outputs(tmp_path / "one.gpkg", tmp_path / "two.gpkg")


def test_existing_scheduler_runs_the_default_model_like_one_process(tmp_path: Path) -> None:
    paths = write_scene_pair(make_scene_pair(11, 448), tmp_path / "data", "s")
    # a low threshold, so that the weak default model draws polygons to compare
    args = [paths["t1"], paths["t2"], "--tile-size", "128", "--overlap", "32",
            "--threshold", "0.03", "--progress", "none"]
    single = subprocess.run([KDMSI, "detect", *args, "-o", tmp_path / "one.gpkg"],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        run = subprocess.run([KDMSI, "detect", *args, "-o", tmp_path / "two.gpkg",
                              "--scheduler", cluster.scheduler_address],
                             capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    _assert_same_outputs(tmp_path / "one.gpkg", tmp_path / "two.gpkg")


def test_unreachable_scheduler_is_one_sentence_and_leaves_nothing(tmp_path: Path,
                                                                  pair) -> None:
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([KDMSI, "detect", *pair, "-o", out / "c.gpkg",
                          "--scheduler", "tcp://127.0.0.1:9", "--progress", "none"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0]
    assert list(out.iterdir()) == []


def test_workers_and_scheduler_together_are_refused(tmp_path: Path, pair) -> None:
    with pytest.raises(ParameterError, match="either --workers"):
        detect(*pair, tmp_path / "c.gpkg", workers=2, scheduler="tcp://127.0.0.1:9")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.tif", "t2.tif"]


def test_missing_dask_names_the_extra_to_install(tmp_path: Path, pair,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an install without it does
    with pytest.raises(ParameterError, match=r"kdmsi-geo\[dask\]"):
        detect(*pair, tmp_path / "c.gpkg", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.tif", "t2.tif"]


def test_worker_refuses_a_model_file_that_differs(pair, random_model: Path) -> None:
    tiles = [t for row in plan_tiles(rasterio.windows.Window(0, 0, 160, 160), 64, 16)
             for t in row]
    norm = Normalization((0.0,) * 3, (255.0,) * 3, (0.5,) * 3, (0.5,) * 3)
    job = Job(t1=str(pair[0]), t2=str(pair[1]), bands=(1, 2, 3), model=str(random_model),
              engine="torch", digest=file_digest(default_model_path()), device="cpu",
              threads=1, norms=(norm, norm), scales=(1.0,), batch_size=2, refinement=None)
    with pytest.raises(CheckpointError, match="give every worker the same model"):
        run_block(job, tiles[:2])
    good = dataclasses.replace(job, digest=file_digest(random_model))
    results = run_block(good, tiles[:3])
    assert [t for r in results for t in r.tiles] == tiles[:3]
    assert all(r.probability.shape == (len(r.tiles), 64, 64) for r in results)
    # the refinement travels with the job: the worker's tiles are the local ones, refined
    refinement = Refinement(radius=6, eps=0.001, step=2)
    refined = run_block(dataclasses.replace(good, refinement=refinement), tiles[:3])
    engine = load_engine(random_model, "torch", "cpu")
    with RasterPair(*pair, (1, 2, 3), 3) as opened:
        local = list(local_results(engine, opened, tiles[:3], (norm, norm), (1.0,), 2,
                                   refinement))
    for got, want, raw in zip(refined, local, results, strict=True):
        assert np.allclose(got.probability, want.probability, atol=1e-6)
        assert not np.allclose(got.probability, raw.probability, atol=1e-3)


def test_blocks_keep_row_major_order_and_cover_every_tile() -> None:
    tiles = [Tile(r, c, 8, 8) for r in range(0, 40, 8) for c in range(0, 24, 8)]
    parts = blocks(tiles, 4)
    assert [len(p) for p in parts] == [4, 4, 4, 3]
    assert [t for p in parts for t in p] == tiles
