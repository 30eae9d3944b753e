"""Output checks, staging and atomic commit, signals, strip writer and COG conversion."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from kdmsi_core.errors import Cancelled, OutputError
from kdmsi_core.hysteresis import change_mask
from kdmsi_core.outputs import (
    MASK_NODATA,
    PROBABILITY_NODATA,
    Staging,
    StripWriter,
    check_outputs,
    write_cog,
)
from kdmsi_core.raster import Grid
from kdmsi_core.signals import stop_on_signals
from tests.core.geodata import transform_for


def _check(tmp_path: Path, gpkg="c.gpkg", prob="p.tif", mask=None, overwrite=False,
           inputs=("t1.tif",)) -> None:
    check_outputs(tmp_path / gpkg, tmp_path / prob, tmp_path / mask if mask else None,
                  [tmp_path / i for i in inputs], overwrite)


def test_good_outputs_pass_and_bad_ones_are_refused(tmp_path: Path) -> None:
    _check(tmp_path, mask="m.TIFF")
    (tmp_path / "c.gpkg").touch()
    (tmp_path / "dir.tif").mkdir()
    cases = [
        ({"gpkg": "c.shp"}, "must be a GeoPackage"),
        ({"prob": "p.png"}, "probability output .* must be a GeoTIFF"),
        ({"mask": "m.jpg"}, "mask output .* must be a GeoTIFF"),
        ({"gpkg": "c.gpkg"}, "already exists; use --overwrite"),
        ({"gpkg": "new.gpkg", "prob": "dir.tif", "overwrite": True}, "is a folder"),
        ({"gpkg": "x.gpkg", "prob": "missing/p.tif"}, "folder .*missing does not exist"),
        ({"gpkg": "x.gpkg", "prob": "t1.tif"}, "is one of the input rasters"),
        ({"gpkg": "x.gpkg", "prob": "p.tif", "mask": "p.tif"}, "same path"),
    ]
    for kwargs, words in cases:
        with pytest.raises(OutputError, match=words):
            _check(tmp_path, **kwargs)
    _check(tmp_path, overwrite=True)


def test_unwritable_folder_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere: use a folder no one can write in
        target = Path("/proc/changes.gpkg")
        check_outputs(target, tmp_path / "p.tif", None, [], False)  # access() says yes
        with pytest.raises(OutputError, match="Cannot write in the output folder"), \
                Staging([target]):
            pass
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="is not writable"):
            check_outputs(locked / "c.gpkg", tmp_path / "p.tif", None, [], False)


def test_commit_moves_outputs_and_leaves_no_staging(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    targets = [tmp_path / "c.gpkg", tmp_path / "sub" / "p.tif"]
    with Staging(targets) as st:
        for t in targets:
            st.staged(t).write_text(t.name)
        st.scratch("work.tif").write_text("scratch")
        assert not any(t.exists() for t in targets)
        st.commit()
    assert [t.read_text() for t in targets] == ["c.gpkg", "p.tif"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.gpkg", "p.tif", "sub"]


def test_an_error_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "c.gpkg"
    with pytest.raises(RuntimeError), Staging([target]) as st:
        st.staged(target).write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_commit_undoes_moved_outputs(tmp_path: Path) -> None:
    targets = [tmp_path / "c.gpkg", tmp_path / "p.tif"]
    with pytest.raises(OutputError, match="previous files are unchanged"), \
            Staging(targets) as st:
        st.staged(targets[0]).write_text("x")  # the second one is never staged
        st.commit()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_becomes_cancelled_and_handlers_are_restored(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "c.gpkg"
    with pytest.raises(Cancelled, match="SIGTERM"), stop_on_signals(), \
            Staging([target]) as st:
        st.staged(target).write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here at the latest
    assert signal.getsignal(signal.SIGTERM) is before
    assert list(tmp_path.iterdir()) == []


def _grid(width: int, height: int) -> Grid:
    return Grid(rasterio.crs.CRS.from_epsg(32633), transform_for(), width, height)


def test_strip_writer_fills_outside_the_region_and_thresholds(tmp_path: Path) -> None:
    grid, region = _grid(50, 40), Window(10, 5, 30, 20)
    paths = [tmp_path / f"{n}.tif" for n in ("p", "c", "m")]
    writer = StripWriter(grid, region, 0.5, 0.5, *paths, tags={"kdmsi_threshold": "0.5"})
    prob = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    valid = np.ones((20, 30), bool)
    valid[:, :3] = False
    writer.write(5, prob[:12], valid[:12])
    writer.write(17, prob[12:], valid[12:])
    writer.finish()
    writer.close()
    with rasterio.open(paths[0]) as p, rasterio.open(paths[1]) as c, \
            rasterio.open(paths[2]) as m:
        pv, cv, mv = p.read(1), c.read(1), m.read(1)
        assert p.nodata == PROBABILITY_NODATA and m.nodata == MASK_NODATA
        assert p.tags()["kdmsi_threshold"] == "0.5"
    outside = np.ones((40, 50), bool)
    outside[5:25, 13:40] = False
    assert (pv[outside] == PROBABILITY_NODATA).all() and (mv[outside] == MASK_NODATA).all()
    assert (cv[outside] == 0).all()
    inner = prob[:, 3:]
    assert np.allclose(pv[5:25, 13:40], inner)
    assert np.array_equal(cv[5:25, 13:40], (inner > 0.5).astype(np.uint8))
    assert np.array_equal(mv[5:25, 13:40], (inner > 0.5).astype(np.uint8))
    assert writer.changed_pixels == int((inner > 0.5).sum())


def test_strip_writer_grows_changes_across_strips_as_on_the_whole_raster(
        tmp_path: Path) -> None:
    """Strips of any height, some shorter than the growth reach, give the mask the rule gives
    the whole region at once."""
    grid, region = _grid(60, 70), Window(4, 3, 50, 61)
    rng = np.random.default_rng(3)
    prob = rng.random((61, 50)).astype(np.float32) ** 3  # mostly weak, a few sure pixels
    prob[20:40, 10:12] = 0.45  # a weak band that crosses strips, touching one sure pixel
    prob[39, 11] = 0.9
    valid = np.ones((61, 50), bool)
    valid[:, 45:] = False
    paths = [tmp_path / f"{n}.tif" for n in ("p", "c", "m")]
    writer = StripWriter(grid, region, 0.6, 0.3, *paths, tags={})
    row = 0
    for height in (5, 2, 17, 1, 9, 27):
        writer.write(3 + row, prob[row:row + height], valid[row:row + height])
        row += height
    assert row == 61
    writer.finish()
    writer.close()
    expected = change_mask(prob, 0.6, 0.3, valid)
    with rasterio.open(paths[1]) as c, rasterio.open(paths[2]) as m:
        cv, mv = c.read(1), m.read(1)
    assert np.array_equal(cv[3:64, 4:54], expected.astype(np.uint8))
    assert np.array_equal(mv[3:64, 4:54][valid], expected[valid].astype(np.uint8))
    assert expected.sum() > (prob * valid > 0.6).sum()  # the rule did grow here
    assert expected[31:40, 10:12].all() and not expected[:, 45:].any()
    assert writer.changed_pixels == int(expected.sum())


def test_strip_writer_refuses_strips_out_of_order(tmp_path: Path) -> None:
    grid = _grid(20, 20)
    writer = StripWriter(grid, Window(0, 0, 20, 20), 0.5, 0.25, tmp_path / "p.tif",
                         tmp_path / "c.tif", None, tags={})
    writer.write(0, np.zeros((5, 20), np.float32), np.ones((5, 20), bool))
    with pytest.raises(ValueError, match="out of order"):
        writer.write(10, np.zeros((5, 20), np.float32), np.ones((5, 20), bool))
    writer.close()


def test_write_cog_is_a_valid_cog_with_overviews_and_nodata(tmp_path: Path) -> None:
    grid = _grid(1300, 1100)
    src = tmp_path / "p.tif"
    writer = StripWriter(grid, Window(0, 0, 1300, 1100), 0.5, 0.25, src, tmp_path / "c.tif",
                         None, tags={})
    rng = np.random.default_rng(0)
    for row in range(0, 1100, 100):
        writer.write(row, rng.random((100, 1300), dtype=np.float32), np.ones((100, 1300), bool))
    writer.finish()
    writer.close()
    write_cog(src, tmp_path / "cog.tif", "AVERAGE")
    valid, errors, warnings = cog_validate(tmp_path / "cog.tif", strict=True)
    assert valid and not errors and not warnings
    with rasterio.open(tmp_path / "cog.tif") as cog, rasterio.open(src) as ref:
        assert cog.overviews(1) == [2, 4] and cog.block_shapes[0] == (512, 512)
        assert cog.nodata == PROBABILITY_NODATA and cog.compression.name == "deflate"
        assert cog.crs == ref.crs and cog.transform == ref.transform
        assert np.array_equal(cog.read(1), ref.read(1))
