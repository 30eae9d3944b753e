"""Finer imagery read at the model's resolution: pixel sizes in metres, the factor, and
``detect`` using it while its outputs stay on t1's grid."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from kdmsi_core import detect
from kdmsi_core.checkpoint import load_checkpoint, read_card, save_checkpoint
from kdmsi_core.resolution import (
    LARGEST_TILE,
    MIN_FACTOR,
    ground_pixel_size,
    reduced_scales,
    reduced_tiling,
    reduction,
)
from tests.core.geodata import scene, transform_for, write_tif


def test_pixel_size_in_metres_for_projected_and_geographic_crs() -> None:
    utm = CRS.from_epsg(32633)
    assert ground_pixel_size(utm, transform_for(0.3), 100, 100) == pytest.approx(0.3)
    feet = CRS.from_epsg(2263)  # New York Long Island, US survey feet
    size = ground_pixel_size(feet, from_origin(1e6, 2e5, 1.0, 1.0), 100, 100)
    assert size == pytest.approx(0.3048006, rel=1e-6)
    # 1e-5 degrees at the equator: about 1.11 m each way
    wgs84 = CRS.from_epsg(4326)
    equator = ground_pixel_size(wgs84, from_origin(10.0, 0.0005, 1e-5, 1e-5), 100, 100)
    assert equator == pytest.approx(1.1106, rel=2e-3)
    # at 60 degrees north a degree of longitude is half as long: the side is about 1/sqrt(2)
    north = ground_pixel_size(wgs84, from_origin(10.0, 60.0005, 1e-5, 1e-5), 100, 100)
    assert north / equator == pytest.approx(np.sqrt(0.5) * 1.0056, rel=3e-3)
    assert ground_pixel_size(None, transform_for(0.3), 100, 100) is None
    rotated = transform_for(0.3) * Affine.rotation(30)
    assert ground_pixel_size(utm, rotated, 100, 100) == pytest.approx(0.3)


def test_only_finer_data_are_reduced() -> None:
    assert reduction(0.15, 0.5) == pytest.approx(0.3)
    assert reduction(0.5, 0.5) == 1.0
    assert reduction(1.0, 0.5) == 1.0  # coarser data are not enlarged
    assert reduction(None, 0.5) == 1.0 and reduction(0.15, None) == 1.0
    assert reduction(0.01, 0.5) == MIN_FACTOR
    assert reduced_scales((1.0, 1.5), 0.3) == (0.3, 0.45)
    assert reduced_scales((1.0, 1.5), 1.0) == (1.0, 1.5)


def test_tiles_grow_to_cover_the_same_ground() -> None:
    assert reduced_tiling(256, 32, 1.0, 4) == (256, 32)
    assert reduced_tiling(256, 32, 0.5, 4) == (512, 64)
    side, overlap = reduced_tiling(256, 32, 0.3, 16)
    assert side == 848 and side % 16 == 0 and overlap == 106
    assert reduced_tiling(256, 32, MIN_FACTOR, 4)[0] == LARGEST_TILE


@pytest.fixture(scope="module")
def metre_model(tmp_path_factory: pytest.TempPathFactory, difference_model: Path) -> Path:
    """The difference model, its card saying it learnt from 1-m pixels."""
    loaded = load_checkpoint(difference_model, "cpu")
    card = replace(loaded.card, training={"pixel_size": 1.0})
    return save_checkpoint(tmp_path_factory.mktemp("metre") / "m.safetensors",
                           loaded.model, card)


def _fine_pair(folder: Path, pixel: float) -> tuple[Path, Path]:
    t1, t2 = scene((320, 320), changes=((80, 80, 200, 200),))
    return (write_tif(folder / "t1.tif", t1, transform=transform_for(pixel)),
            write_tif(folder / "t2.tif", t2, transform=transform_for(pixel)))


def test_detect_reads_finer_imagery_at_the_models_resolution(tmp_path: Path,
                                                             metre_model: Path) -> None:
    assert read_card(metre_model).pixel_size == 1.0
    t1, t2 = _fine_pair(tmp_path, 0.25)
    s = detect(t1, t2, tmp_path / "c.gpkg", model=metre_model, mask=tmp_path / "m.tif")
    assert s.pixel_size_m == pytest.approx(0.25)
    assert s.resolution_factor == pytest.approx(0.25)
    assert s.scales == (0.25,) and (s.tile_size, s.overlap) == (1024, 128)
    cell = read_card(metre_model).map_stride  # default minimum area: 2 cells of the map's
    assert s.min_area == pytest.approx(2 * (cell * 1.0) ** 2)  # grid at the model's pixels
    with rasterio.open(tmp_path / "m.tif") as ds:  # outputs on t1's own 0.25-m grid
        assert (ds.width, ds.height) == (320, 320)
        assert ds.transform == transform_for(0.25)
        assert ds.tags()["kdmsi_resolution_factor"] == "0.25"
        flagged = ds.read(1) == 1
    rows, cols = np.nonzero(flagged)  # the change, within one 64-px cell of the 1-m model
    assert flagged[80:200, 80:200].mean() > 0.8
    assert rows.min() >= 16 and rows.max() < 264 and cols.min() >= 16 and cols.max() < 264

    native = detect(t1, t2, tmp_path / "n.gpkg", model=metre_model, match_resolution=False)
    assert native.resolution_factor == 1.0 and native.scales == (1.0,)
    assert (native.tile_size, native.overlap) == (256, 32)
    assert native.min_area == pytest.approx(2 * (cell * 0.25) ** 2)  # t1's own pixels
    chosen = detect(t1, t2, tmp_path / "s.gpkg", model=metre_model, scales=(0.5,),
                    tile_size=128, overlap=16)
    assert chosen.resolution_factor == 1.0 and chosen.scales == (0.5,)
    assert (chosen.tile_size, chosen.overlap) == (128, 16)


def test_the_embedded_models_refinement_covers_its_ground_on_finer_imagery(
        tmp_path: Path) -> None:
    t1, t2 = _fine_pair(tmp_path, 0.25)  # the embedded model learnt at 0.5 m, radius 12 px
    s = detect(t1, t2, tmp_path / "c.gpkg", mask=tmp_path / "m.tif")
    assert s.resolution_factor == pytest.approx(0.5) and s.refine_radius == 24
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.tags()["kdmsi_refine_radius"] == "24"
    given = detect(t1, t2, tmp_path / "g.gpkg", refine_radius=12)
    assert given.refine_radius == 12
    native = detect(t1, t2, tmp_path / "n.gpkg", match_resolution=False)
    assert native.resolution_factor == 1.0 and native.refine_radius == 12


def test_coarser_imagery_and_models_without_a_pixel_size_run_as_they_are(
        tmp_path: Path, metre_model: Path, difference_model: Path) -> None:
    t1, t2 = _fine_pair(tmp_path, 2.0)
    coarse = detect(t1, t2, tmp_path / "c.gpkg", model=metre_model)
    assert coarse.pixel_size_m == pytest.approx(2.0) and coarse.resolution_factor == 1.0
    assert coarse.scales == (1.0,)
    (tmp_path / "fine").mkdir()
    t1, t2 = _fine_pair(tmp_path / "fine", 0.25)
    unknown = detect(t1, t2, tmp_path / "u.gpkg", model=difference_model)
    assert unknown.resolution_factor == 1.0 and unknown.scales == (1.0,)
    cell = read_card(metre_model).map_stride
    assert coarse.min_area == pytest.approx(2 * (cell * 2.0) ** 2)
    assert unknown.min_area == pytest.approx(2 * (cell * 0.25) ** 2)


def test_the_embedded_model_and_its_onnx_twin_know_their_pixel_size() -> None:
    from kdmsi_core.checkpoint import default_model_path

    path = default_model_path()
    assert read_card(path).pixel_size == 0.5
    assert read_card(path.with_suffix(".onnx")).pixel_size == 0.5
    assert json.loads(read_card(path).to_json())["training"]["pixel_size"] == 0.5
