"""Polygons from a change raster: shapes, fields, areas, GeoPackage 1.2, bounded stats."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from rasterio.crs import CRS
from shapely.geometry import box

import kdmsi_core.vectorize as vec
from tests.core.geodata import ORIGIN, transform_for, write_tif


def _rasters(tmp_path: Path, changes: np.ndarray, prob: np.ndarray, crs: str = "EPSG:32633",
             pixel: float = 1.0, origin: tuple[float, float] = ORIGIN) -> tuple[Path, Path]:
    t = transform_for(pixel, origin)
    ch = write_tif(tmp_path / "changes.tif", changes[None].astype(np.uint8), crs=crs,
                   transform=t)
    pr = write_tif(tmp_path / "prob.tif", prob[None].astype(np.float32), crs=crs,
                   transform=t, nodata=-1.0)
    return ch, pr


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    changes = np.zeros((100, 120), np.uint8)
    changes[10:30, 10:40] = 1  # 600 px
    changes[50:90, 60:70] = 1  # 400 px, with a 2 x 2 hole
    changes[60:62, 64:66] = 0
    prob = np.random.default_rng(0).random((100, 120)).astype(np.float32) * 0.4
    prob[changes == 1] = 0.6 + 0.3 * np.random.default_rng(1).random(int(changes.sum()))
    return changes, prob


def test_regions_become_valid_polygons_with_exact_fields(tmp_path: Path) -> None:
    changes, prob = _two_regions()
    ch, pr = _rasters(tmp_path, changes, prob)
    out = tmp_path / "out.gpkg"
    count, area = vec.vectorize(ch, pr, out)
    assert (count, area) == (2, 996.0)
    meta, _, geoms, fields = pyogrio.raw.read(out, layer="changes")
    assert meta["crs"] == "EPSG:32633" and meta["geometry_type"] == "Polygon"
    assert list(meta["fields"]) == ["area_m2", "mean_prob", "max_prob"]
    polys = shapely.from_wkb(geoms)
    assert shapely.is_valid(polys).all()
    order = np.argsort(fields[0])
    x0, y0 = ORIGIN
    expect_big = box(x0 + 10, y0 - 30, x0 + 40, y0 - 10)
    assert polys[order[1]].equals(expect_big)
    assert len(polys[order[0]].interiors) == 1
    for i, mask in ((order[1], changes[:50] == 1), (order[0], changes[50:] == 1)):
        part = prob[:50] if i == order[1] else prob[50:]
        assert fields[0][i] == mask.sum()
        assert fields[1][i] == pytest.approx(part[mask].mean(), abs=1e-6)
        assert fields[2][i] == pytest.approx(part[mask].max(), abs=1e-6)


def test_geopackage_is_version_1_2_with_layer_changes(tmp_path: Path) -> None:
    changes, prob = _two_regions()
    out = tmp_path / "out.gpkg"
    vec.vectorize(*_rasters(tmp_path, changes, prob), out)
    with sqlite3.connect(out) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
        names = [r[0] for r in db.execute("SELECT table_name FROM gpkg_contents")]
    assert names == ["changes"]
    assert pyogrio.list_layers(out)[:, 0].tolist() == ["changes"]


def test_min_area_drops_small_regions(tmp_path: Path) -> None:
    changes, prob = _two_regions()
    count, area = vec.vectorize(*_rasters(tmp_path, changes, prob), tmp_path / "o.gpkg",
                                min_area=500)
    assert (count, area) == (1, 600.0)


def test_no_change_writes_an_empty_layer(tmp_path: Path) -> None:
    zeros = np.zeros((40, 40))
    out = tmp_path / "empty.gpkg"
    assert vec.vectorize(*_rasters(tmp_path, zeros, zeros), out) == (0, 0.0)
    info = pyogrio.read_info(out, layer="changes")
    assert info["features"] == 0 and info["crs"] == "EPSG:32633"
    assert info["geometry_type"] == "Polygon"


@pytest.mark.parametrize("small_window", [0, 1 << 14])  # GDAL burn / centre tests
def test_batches_and_row_chunks_give_the_same_result(tmp_path: Path, monkeypatch,
                                                     small_window: int) -> None:
    changes = np.zeros((60, 60), np.uint8)
    changes[1::3, 1:57:3] = 1  # 20 x 19 one-pixel regions
    changes[:, 58] = 1  # one tall region
    prob = np.linspace(0, 1, 3600, dtype=np.float32).reshape(60, 60)
    monkeypatch.setattr(vec, "BATCH", 150)
    monkeypatch.setattr(vec, "CHUNK_PIXELS", 5)
    monkeypatch.setattr(vec, "SMALL_WINDOW", small_window)
    out = tmp_path / "many.gpkg"
    count, _ = vec.vectorize(*_rasters(tmp_path, changes, prob), out)
    assert count == 381 == pyogrio.read_info(out)["features"]
    _, _, _, fields = pyogrio.raw.read(out)
    tall = int(np.argmax(fields[0]))
    assert fields[1][tall] == pytest.approx(prob[:, 58].mean(), abs=1e-6)
    assert fields[2][tall] == pytest.approx(prob[:, 58].max())


def test_geographic_crs_gets_geodesic_areas(tmp_path: Path) -> None:
    # one 0.01 x 0.01 degree pixel block at the equator: about 1113.2 m x 1105.7 m
    changes = np.zeros((4, 4), np.uint8)
    changes[1:3, 1:3] = 1
    ch, pr = _rasters(tmp_path, changes, changes * 0.9, crs="EPSG:4326", pixel=0.005,
                      origin=(10.0, 0.01))
    count, area = vec.vectorize(ch, pr, tmp_path / "geo.gpkg")
    assert count == 1 and area == pytest.approx(1113.19 * 1105.74, rel=2e-3)


def test_projected_units_other_than_metres_are_converted() -> None:
    feet = CRS.from_epsg(2229)  # NAD83 / California zone 5 (US survey feet)
    square = box(0, 0, 100, 100)
    assert vec.area_function(feet)(square) == pytest.approx(10000 * 0.3048006096 ** 2)
    assert vec.area_function(CRS.from_epsg(32633))(square) == 10000
