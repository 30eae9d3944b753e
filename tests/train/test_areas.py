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


def _tif(path, array, crs="EPSG:32633", px=PX):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs,
                       transform=from_origin(*ORIGIN, px, px)) as ds:
        ds.write(array)


def _gpkg(path, geoms, changed, crs="EPSG:32633", field="changed"):
    pyogrio.raw.write(path, geometry=shapely.to_wkb(np.asarray(geoms)), field_data=[
        np.asarray(changed, np.int32)], fields=[field], crs=crs, geometry_type="Polygon",
        driver="GPKG")


def _world(col, row, size, px=PX):
    x0, y0 = ORIGIN[0] + col * px, ORIGIN[1] - row * px
    return shapely.box(x0, y0 - size * px, x0 + size * px, y0)


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


@pytest.fixture
def fine_scene(tmp_path):
    """Rasters at 0.25 m, twice as fine as the embedded model's data, with eight changed
    blocks and an unchanged half."""
    rng = np.random.default_rng(1)
    t1 = (rng.normal(110, 12, (3, 640, 640))).clip(0, 255).astype(np.uint8)
    t2 = (t1 * 0.95 + rng.normal(0, 4, t1.shape)).clip(0, 255).astype(np.uint8)
    blocks = [(col, row) for row in (100, 230) for col in (100, 230, 360, 490)]
    for col, row in blocks:
        t2[:, row:row + 20, col:col + 24] = 230
    _tif(tmp_path / "t1.tif", t1, px=0.25)
    _tif(tmp_path / "t2.tif", t2, px=0.25)
    areas = [_world(c - 4, r - 4, 32, 0.25) for c, r in blocks] + [_world(10, 340, 290, 0.25)]
    _gpkg(tmp_path / "areas.gpkg", areas, [1] * len(blocks) + [0])
    return tmp_path


def test_reduced_gis_tiles_keep_their_val_windows_at_the_rasters_pixels(fine_scene, tmp_path):
    from kdmsi_train.datasets import PairStore, TileFolder
    from kdmsi_train.reduce import reduce_tile
    from kdmsi_train.stages import NATIVE, write_area_tiles

    s = fine_scene
    root = write_area_tiles(s / "t1.tif", s / "t2.tif", s / "areas.gpkg", tmp_path / "tiles",
                            64, 40, seed=0, window=128)
    val, native = TileFolder.open(root, "val"), TileFolder.open(root / NATIVE, "val")
    assert native.names == val.names and np.array_equal(native.labels, val.labels)
    assert val.labels.min() == 0 and val.labels.max() == 1
    assert not (root / NATIVE / "list" / "train_label.txt").exists()
    small, full = PairStore(val), PairStore(native)
    assert small.shape[1:] == (64, 64) and full.shape[1:] == (128, 128)
    for i in range(len(val)):  # the same ground: the native window reduced is the tile
        a_small, _ = small.batch(np.array([i]))
        a_full, b_full = full.batch(np.array([i]))
        assert np.abs(reduce_tile(a_full[0], 0.5).astype(int) - a_small[0]).mean() < 8
        if val.labels[i]:
            assert (b_full[0] > 200).all(axis=0).sum() == pytest.approx(20 * 24, rel=0.1)
    unreduced = write_area_tiles(s / "t1.tif", s / "t2.tif", s / "areas.gpkg",
                                 tmp_path / "same", 128, 40, seed=0, window=128)
    assert not (unreduced / NATIVE).exists()  # at the rasters' pixels already


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


@pytest.mark.slow
def test_gis_form_on_finer_rasters_matches_the_refined_threshold_at_their_pixels(fine_scene):
    from kdmsi_core.checkpoint import read_card

    s, out = fine_scene, fine_scene / "m.safetensors"
    result = CliRunner().invoke(cli, [
        "train", "--t1", str(s / "t1.tif"), "--t2", str(s / "t2.tif"), "--labels",
        str(s / "areas.gpkg"), "--tile-size", "64", "--samples", "40", "--epochs", "1",
        "--stage2-epochs", "1", "--rounds", "1", "--batch-size", "8", "--device", "cpu",
        "-o", str(out), "--progress", "none"])
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.kind == "segmenter" and card.pixel_size == 0.5 and card.tile_size == 64
    # read as detect reads 0.25-m imagery for this model: its own pixels at half the scales
    assert card.training["refined_threshold_on"] == {
        "split": "val", "scales": [x / 2 for x in card.scales], "pixel_size": 0.25,
        "radius": 2 * card.refine.radius}
    assert 0 < card.refine.threshold < 1
