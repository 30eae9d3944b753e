"""Opening, validating and aligning pairs; masks of every kind; 16-bit and float ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from kdmsi_core.errors import InputError, ParameterError
from kdmsi_core.normalize import Normalization
from kdmsi_core.raster import RasterPair, needs_stretch
from tests.core.geodata import CRS, ORIGIN, scene, texture, transform_for, write_tif

EIGHT_BIT = Normalization.for_dtype("uint8", 3)


def reproject_file(src_path: Path, dst_path: Path, crs: str, nodata: float = 0) -> Path:
    """A copy of ``src_path`` warped into ``crs`` (bilinear), nodata outside."""
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds)
        out = np.zeros((src.count, height, width), src.dtypes[0])
        reproject(rasterio.band(src, list(src.indexes)), out, dst_transform=transform,
                  dst_crs=crs, dst_nodata=nodata, resampling=Resampling.bilinear)
    return write_tif(dst_path, out, crs=crs, transform=transform, nodata=nodata)


def test_identical_grid_reads_both_dates_and_full_validity(pair) -> None:
    with RasterPair(*pair, None, 3) as rp:
        assert rp.window == Window(0, 0, 160, 160) and rp.bands == (1, 2, 3)
        a1, a2, valid = rp.read(Window(30, 30, 50, 40))
    t1, t2 = scene()
    assert a1.dtype == np.float32 and a1.shape == (3, 40, 50) and valid.all()
    assert np.array_equal(a1, t1[:, 30:70, 30:80]) and np.array_equal(a2, t2[:, 30:70, 30:80])


def test_whole_pixel_offset_is_read_without_resampling(tmp_path: Path) -> None:
    t1, t2 = scene()
    a = write_tif(tmp_path / "a.tif", t1)
    # t2 covers rows/cols 20.. of t1's grid and extends 30 px beyond it to the east
    shifted = np.zeros((3, 140, 170), np.uint8)
    shifted[:, :, :140] = t2[:, 20:, 20:]
    b = write_tif(tmp_path / "b.tif", shifted,
                  transform=transform_for(origin=(ORIGIN[0] + 20, ORIGIN[1] - 20)))
    with RasterPair(a, b, None, 3) as rp:
        assert rp._vrt is None and rp.window == Window(20, 20, 140, 140)
        _, got, valid = rp.read(Window(0, 0, 160, 160))
    assert not valid[:20].any() and not valid[:, :20].any() and valid[20:, 20:].all()
    assert np.array_equal(got[:, 20:, 20:], t2[:, 20:, 20:])


def test_other_crs_is_warped_onto_t1_grid(tmp_path: Path, pair) -> None:
    other = reproject_file(pair[1], tmp_path / "t2_3857.tif", "EPSG:3857")
    with RasterPair(pair[0], other, None, 3) as rp:
        assert rp._vrt is not None
        _, got, valid = rp.read(Window(0, 0, 160, 160))
    _, t2 = scene()
    inner = valid[5:-5, 5:-5]
    assert inner.mean() > 0.99
    diff = np.abs(got[:, 5:-5, 5:-5] - t2[:, 5:-5, 5:-5].astype(np.float32))[:, inner]
    assert np.median(diff) < 3 and diff.mean() < 8


@pytest.mark.parametrize("kind", ["nodata", "alpha", "internal_mask", "nan"])
def test_every_kind_of_mask_makes_pixels_invalid(tmp_path: Path, pair, kind: str) -> None:
    t1, _ = scene()
    hole = np.zeros((160, 160), bool)
    hole[:, 60:90] = True
    path = tmp_path / f"{kind}.tif"
    if kind == "nodata":
        data = t1.copy()
        data[:, hole] = 0
        write_tif(path, data, nodata=0)
    elif kind == "alpha":
        write_tif(path, t1, alpha=np.where(hole, 0, 255))
    elif kind == "nan":
        data = t1.astype(np.float32)
        data[1, hole] = np.nan
        write_tif(path, data)
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_tif(path, t1)
            with rasterio.open(path, "r+") as ds:
                ds.write_mask(np.where(hole, 0, 255).astype(np.uint8))
    for t2 in (pair[1], reproject_file(pair[1], tmp_path / "w.tif", "EPSG:32634")):
        with RasterPair(path, t2, None, 3) as rp:
            _, _, valid = rp.read(Window(0, 0, 160, 160))
        assert not valid[:, 61:89].any()
        assert valid[10:150, 10:55].all() and valid[10:150, 95:150].all()


def test_warped_t2_without_nodata_is_invalid_outside_its_footprint(tmp_path: Path,
                                                                   pair) -> None:
    t1, _ = scene()
    small = write_tif(tmp_path / "small.tif", t1[:, :80, :80].copy(), crs="EPSG:32634",
                      transform=None)
    with rasterio.open(pair[0]) as a:
        bounds = a.bounds
    # place the 80 x 80 t2 (no nodata value) in UTM 34N over the top-left of t1
    from rasterio.warp import transform as warp_xy
    xs, ys = warp_xy(CRS, "EPSG:32634", [bounds.left], [bounds.top])
    with rasterio.open(small, "r+") as ds:
        ds.transform = transform_for(origin=(xs[0], ys[0]))
    with RasterPair(pair[0], small, None, 3) as rp:
        assert rp.window.width < 160 and rp.window.height < 160
        _, _, valid = rp.read(Window(0, 0, 160, 160))
    assert valid[5:60, 5:60].all() and not valid[100:, :].any() and not valid[:, 100:].any()


def test_alpha_band_is_not_counted_as_data(tmp_path: Path, pair) -> None:
    t1, _ = scene()
    rgba = write_tif(tmp_path / "rgba.tif", t1, alpha=np.full((160, 160), 255))
    with RasterPair(rgba, pair[1], None, 3) as rp:
        assert rp.bands == (1, 2, 3)


def test_band_selection_and_its_errors(tmp_path: Path, pair) -> None:
    four = write_tif(tmp_path / "four.tif", texture((160, 160), 3, bands=4),
                     photometric="MINISBLACK")
    with pytest.raises(InputError, match=r"4 data band\(s\) but the model expects 3.*--bands"):
        RasterPair(four, four, None, 3)
    with RasterPair(four, four, (4, 2, 1), 3) as rp:
        a1, _, _ = rp.read(Window(0, 0, 8, 8))
        assert rp.bands == (4, 2, 1)
    with rasterio.open(four) as ds:
        assert np.array_equal(a1[0], ds.read(4, window=Window(0, 0, 8, 8)))
    with pytest.raises(ParameterError, match="--bands 4 is out of range"):
        RasterPair(four, pair[1], (4, 2, 1), 3)
    with pytest.raises(ParameterError, match="lists 2 band"):
        RasterPair(*pair, (1, 2), 3)


def test_unusable_inputs_are_refused_with_one_sentence(tmp_path: Path, pair) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    nocrs = write_tif(tmp_path / "nocrs.tif", scene()[0], crs=None)
    far = write_tif(tmp_path / "far.tif", scene()[1],
                    transform=transform_for(origin=(ORIGIN[0] + 10_000, ORIGIN[1])))
    cases = [
        (tmp_path / "missing.tif", "does not exist"),
        (text, "is not a raster GDAL can read"),
        (tmp_path, "is a folder"),
        (nocrs, "has no coordinate reference system"),
    ]
    for bad, words in cases:
        with pytest.raises(InputError, match=words):
            RasterPair(pair[0], bad, None, 3)
        with pytest.raises(InputError, match=words):
            RasterPair(bad, pair[1], None, 3)
    with pytest.raises(InputError, match="do not overlap"):
        RasterPair(pair[0], far, None, 3)


def test_stretch_rule() -> None:
    assert not needs_stretch(EIGHT_BIT, "uint8")
    assert needs_stretch(EIGHT_BIT, "uint16") and needs_stretch(EIGHT_BIT, "float32")
    sixteen = Normalization.for_dtype("uint16", 3)
    assert not needs_stretch(sixteen, "uint16")


def test_sixteen_bit_pair_gets_one_percentile_stretch_for_both_dates(tmp_path: Path) -> None:
    t1, t2 = scene()
    a = write_tif(tmp_path / "a.tif", (t1.astype(np.uint16) * 40 + 1000))
    b = write_tif(tmp_path / "b.tif", (t2.astype(np.uint16) * 40 + 1000))
    with RasterPair(a, b, None, 3) as rp:
        n1, n2 = rp.normalizations(EIGHT_BIT)
    both = np.concatenate([t1.reshape(3, -1), t2.reshape(3, -1)], axis=1) * 40.0 + 1000
    assert n1 == n2 and n1.mean == EIGHT_BIT.mean and n1.std == EIGHT_BIT.std
    assert np.allclose(n1.low, np.percentile(both, 2, axis=1))
    assert np.allclose(n1.high, np.percentile(both, 98, axis=1))


def test_eight_bit_pair_keeps_the_checkpoint_rule(pair) -> None:
    with RasterPair(*pair, None, 3) as rp:
        assert rp.normalizations(EIGHT_BIT) == (EIGHT_BIT, EIGHT_BIT)


def test_sixteen_bit_and_float_copies_of_an_eight_bit_pair_keep_the_eight_bit_rule(
        tmp_path: Path) -> None:
    t1, t2 = scene()
    for dtype in ("uint16", "float32"):
        a = write_tif(tmp_path / f"a_{dtype}.tif", t1.astype(dtype))
        b = write_tif(tmp_path / f"b_{dtype}.tif", t2.astype(dtype))
        with RasterPair(a, b, None, 3) as rp:
            assert rp.normalizations(EIGHT_BIT) == (EIGHT_BIT, EIGHT_BIT)
