"""The GIS form of training: two GeoTIFFs and drawn label areas in a GeoPackage."""

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio.transform import from_origin

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.cli.main import cli
from kdmsi_core.errors import DataError
from kdmsi_train.areas import AreaStore

ORIGIN = (500000.0, 5400000.0)
PX = 0.5


def _tif(path, array, crs="EPSG:32633"):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs,
                       transform=from_origin(*ORIGIN, PX, PX)) as ds:
        ds.write(array)


def _gpkg(path, geoms, changed, crs="EPSG:32633", field="changed"):
    pyogrio.raw.write(path, geometry=shapely.to_wkb(np.asarray(geoms)), field_data=[
        np.asarray(changed, np.int32)], fields=[field], crs=crs, geometry_type="Polygon",
        driver="GPKG")


def _world(col, row, size):
    x0, y0 = ORIGIN[0] + col * PX, ORIGIN[1] - row * PX
    return shapely.box(x0, y0 - size * PX, x0 + size * PX, y0)


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    t1 = (rng.normal(110, 12, (3, 384, 384))).clip(0, 255).astype(np.uint8)
    t2 = (t1 * 0.95 + rng.normal(0, 4, t1.shape)).clip(0, 255).astype(np.uint8)
    blocks = [(40, 40), (40, 250), (250, 40)]
    for col, row in blocks:
        t2[:, row:row + 20, col:col + 24] = 230
    _tif(tmp_path / "t1.tif", t1)
    _tif(tmp_path / "t2.tif", t2)
    areas = [_world(c - 4, r - 4, 32) for c, r in blocks] + [_world(200, 200, 180)]
    _gpkg(tmp_path / "areas.gpkg", areas, [1, 1, 1, 0])
    return tmp_path


def test_samples_changed_areas_whole_and_unchanged_inside(scene):
    store = AreaStore(scene / "t1.tif", scene / "t2.tif", scene / "areas.gpkg", 64, 20)
    labels = store.labels
    assert labels.sum() == 3 and (labels == 0).sum() >= 3
    a, b = store.batch(np.arange(len(store)))
    assert a.shape[1:] == (3, 64, 64) and a.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int)).mean(axis=(1, 2, 3))
    assert diff[labels == 1].min() > 3 * diff[labels == 0].max()


def test_windows_that_cover_more_ground_are_reduced_to_the_tile(scene):
    # finer rasters train at the model's resolution: windows of 96 px give 64-px tiles
    store = AreaStore(scene / "t1.tif", scene / "t2.tif", scene / "areas.gpkg", 64, 20,
                      window=96)
    a, b = store.batch(np.arange(len(store)))
    assert a.shape[1:] == (3, 64, 64) and store.labels.sum() == 3
    bright = (b[store.labels == 1] > 200).all(axis=1).sum(axis=(1, 2))
    block = 20 * 24 * (64 / 96) ** 2  # the changed block, shrunk with its window
    assert 0.7 * block < bright.min() and bright.max() < 1.3 * block
    with pytest.raises(DataError, match="unchanged tiles of 200 px .*--native-resolution"):
        AreaStore(scene / "t1.tif", scene / "t2.tif", scene / "areas.gpkg", 64, 20,
                  window=200)  # the unchanged area is 180 px wide


def test_train_gis_form_writes_a_loadable_checkpoint(scene):
    out = scene / "m.safetensors"
    result = CliRunner().invoke(cli, [
        "train", "--t1", str(scene / "t1.tif"), "--t2", str(scene / "t2.tif"), "--labels",
        str(scene / "areas.gpkg"), "--tile-size", "64", "--samples", "12", "--epochs", "1",
        "--batch-size", "4", "-o", str(out), "--progress", "none"])
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(out)
    assert loaded.card.tile_size == 64 and loaded.card.training["t1"].endswith("t1.tif")


def test_labels_without_changed_field(scene):
    _gpkg(scene / "bad.gpkg", [_world(0, 0, 50)], [1], field="class")
    with pytest.raises(DataError, match="no field 'changed'"):
        AreaStore(scene / "t1.tif", scene / "t2.tif", scene / "bad.gpkg", 64, 10)


def test_labels_in_a_crs_that_cannot_be_transformed(scene):
    mars = "+proj=longlat +a=3396190 +b=3376200 +no_defs +type=crs"
    _gpkg(scene / "mars.gpkg", [shapely.box(0, 0, 1, 1)], [1], crs=mars)
    out = scene / "m.safetensors"
    result = CliRunner().invoke(cli, [
        "train", "--t1", str(scene / "t1.tif"), "--t2", str(scene / "t2.tif"), "--labels",
        str(scene / "mars.gpkg"), "-o", str(out), "--progress", "none"])
    assert result.exit_code != 0
    assert "cannot be transformed" in result.output and "Traceback" not in result.output
    assert not out.exists() and not (scene / "m.stages").exists()


def test_downscaled_float_windows_keep_their_fractions():
    from kdmsi_train.areas import _fit

    x = np.array([[[0.1, 0.2], [0.3, 0.4]]], dtype=np.float32)
    assert _fit(x, 1, np.dtype("float32"))[0, 0, 0] == pytest.approx(0.25)
    assert _fit(x * 10 + 0.2, 1, np.dtype("uint16"))[0, 0, 0] == 3  # integers are rounded
