"""The synthetic data generator: reproducible scenes whose masks mark only real changes,
georeferenced GeoTIFFs, a WSCD-style tile set split by scene, and the ``synth`` command."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from kdmsi_core.cli.main import cli
from kdmsi_core.errors import Cancelled, OutputError, ParameterError
from kdmsi_train.synth import make_scene_pair, write_scene_pair, write_tile_dataset
from kdmsi_train.synth.changes import KINDS
from kdmsi_train.synth.writers import split_scenes

SPLITS = ("train", "val", "test")


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 256-pixel scenes cut into 128-pixel tiles (20 tiles), made in this process."""
    out = tmp_path_factory.mktemp("synth") / "data"
    write_tile_dataset(out, seed=3, scenes=5, scene_size=256, tile_size=128, workers=1)
    return out


@pytest.fixture(scope="module")
def pairs() -> list:
    return [make_scene_pair(seed, 256) for seed in range(8)]


# ---------------------------------------------------------------- scenes


def test_same_seed_same_pair_other_seed_other_pair() -> None:
    a, b, c = make_scene_pair(11, 128), make_scene_pair(11, 128), make_scene_pair(12, 128)
    for key in ("t1", "t2", "mask"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.t1, c.t1)
    assert a.t1.shape == a.t2.shape == (3, 128, 128) and a.t1.dtype == np.uint8
    assert a.mask.shape == (128, 128) and a.mask.dtype == np.uint8
    assert set(np.unique(a.mask)) <= {0, 1}


def test_kinds_say_what_changed_each_masked_pixel(pairs: list) -> None:
    for pair in pairs:
        assert pair.kinds.shape == pair.mask.shape and pair.kinds.dtype == np.uint8
        assert np.array_equal(pair.kinds > 0, pair.mask > 0)
        assert set(np.unique(pair.kinds)) <= set(range(len(KINDS) + 1))
    seen = set().union(*(np.unique(p.kinds).tolist() for p in pairs))
    assert {1, 2} <= seen  # new buildings and demolitions
    assert {p.backward for p in pairs} == {False, True}  # both directions occur


def test_rectangular_scenes() -> None:
    pair = make_scene_pair(1, (96, 160), pixel_size=1.0)
    assert pair.t1.shape == (3, 96, 160) and pair.mask.shape == (96, 160)


def test_images_look_like_imagery_not_flat_colour(pairs: list) -> None:
    for pair in pairs:
        for img in (pair.t1, pair.t2):
            assert img.std() > 15  # varied content
            assert len(np.unique(img[1])) > 100  # textured, not a few flat colours
            assert 0.02 < img.mean() / 255 < 0.9


def test_mask_marks_real_change_and_pseudo_change_is_everywhere(pairs: list) -> None:
    inside, outside = [], []
    for pair in pairs:
        diff = np.abs(pair.t1.astype(int) - pair.t2.astype(int)).mean(axis=0)
        outside.append(diff[pair.mask == 0].mean())
        if pair.mask.any():
            inside.append(diff[pair.mask == 1].mean())
    assert min(outside) > 3  # light, season, shadows, noise, shift differ everywhere
    assert len(inside) >= 3
    assert np.mean(inside) > 1.5 * np.mean(outside)


def test_changes_are_sparse(pairs: list) -> None:
    changed_tiles = [p.mask.reshape(2, 128, 2, 128).any(axis=(1, 3)).mean() for p in pairs]
    assert 0.2 < 1 - np.mean(changed_tiles) < 0.9  # a good share of tiles is unchanged
    assert max(p.mask.mean() for p in pairs) < 0.3  # changes are objects, not the scene


@pytest.mark.parametrize("size, pixel_size", [(8, 0.5), (128.5, 0.5), (128, 0.0), (128, 50.0)])
def test_bad_scene_arguments(size, pixel_size) -> None:
    with pytest.raises(ParameterError):
        make_scene_pair(0, size, pixel_size)


# ---------------------------------------------------------------- GeoTIFFs


def test_geotiffs_are_georeferenced_and_read_back(tmp_path: Path) -> None:
    pair = make_scene_pair(4, 128)
    paths = write_scene_pair(pair, tmp_path, "s", epsg=32632, origin=(400000.0, 5500000.0),
                             pixel_size=0.5)
    assert {p.name for p in paths.values()} == {"s_t1.tif", "s_t2.tif", "s_mask.tif"}
    for key, path in paths.items():
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32632
            assert ds.res == (0.5, 0.5)
            assert (ds.transform.c, ds.transform.f) == (400000.0, 5500000.0)
            assert ds.nodata is None
            assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
            data = ds.read()
        if key == "mask":
            assert np.array_equal(data[0], pair.mask * 255)
        else:
            assert data.shape[0] == 3 and np.array_equal(data, getattr(pair, key))


def test_default_origin_is_plausible_utm_and_uint16_range(tmp_path: Path) -> None:
    pair = make_scene_pair(4, 64)
    paths = write_scene_pair(pair, tmp_path, "s", dtype="uint16")
    with rasterio.open(paths["t1"]) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.dtypes[0] == "uint16"
        assert 166_000 < ds.bounds.left < 834_000 and 4_000_000 < ds.bounds.top < 7_000_000
        data = ds.read()
    assert np.array_equal(data, pair.t1.astype(np.uint16) * 15 + 100)
    assert data.max() <= 4095


@pytest.mark.parametrize("epsg", [4326, 999999])
def test_geographic_or_unknown_crs_refused(tmp_path: Path, epsg: int) -> None:
    with pytest.raises(ParameterError, match="EPSG"):
        write_scene_pair(make_scene_pair(0, 64), tmp_path, "s", epsg=epsg)


# ---------------------------------------------------------------- tile data set


def test_tile_layout_lists_and_scene_split(dataset: Path) -> None:
    tiles = dataset / "tiles"
    names = {p.name for p in (tiles / "A").iterdir()}
    assert len(names) == 20
    assert names == {p.name for p in (tiles / "B").iterdir()}
    assert names == {p.name for p in (tiles / "label").iterdir()}
    listed = {s: (tiles / "list" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert sorted(n for s in SPLITS for n in listed[s]) == sorted(names)
    scenes = {s: {n.rsplit("_r", 1)[0] for n in listed[s]} for s in SPLITS}
    assert all(scenes[s] for s in SPLITS)  # every split has a scene
    assert not (scenes["train"] & scenes["val"] or scenes["train"] & scenes["test"]
                or scenes["val"] & scenes["test"])  # no place in two splits
    assert len(list((dataset / "scenes").glob("*.tif"))) == 15
    assert not list(dataset.glob(".synth-*"))


def test_labels_match_masks_and_unchanged_tiles_still_differ(dataset: Path) -> None:
    tiles = dataset / "tiles"
    labels = {}
    for s in SPLITS:
        lines = (tiles / "list" / f"{s}_label.txt").read_text().splitlines()
        assert [ln.split(",")[0] for ln in lines] == (tiles / "list" / f"{s}.txt").read_text(
        ).split()
        labels.update(ln.split(",") for ln in lines)
    assert set(labels.values()) == {"0", "1"}
    for name, label in labels.items():
        mask = _read(tiles / "label" / name)
        assert set(np.unique(mask)) <= {0, 255}
        assert int(label) == int(mask.any())
        if label == "0":
            a, b = _read(tiles / "A" / name), _read(tiles / "B" / name)
            assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_tiles_are_windows_of_the_geotiffs(dataset: Path) -> None:
    with rasterio.open(dataset / "scenes" / "scene_002_t2.tif") as ds:
        window = ds.read(window=((128, 256), (0, 128)))
        x, y = ds.transform.c, ds.transform.f
    assert np.array_equal(_read(dataset / "tiles" / "B" / "scene_002_r1_c0.png"), window)
    with rasterio.open(dataset / "scenes" / "scene_003_t1.tif") as ds:
        assert (ds.transform.c, ds.transform.f) != (x, y)  # scenes do not overlap


def test_dataset_is_reproducible_with_worker_processes(tmp_path: Path, dataset: Path) -> None:
    again = tmp_path / "again"
    write_tile_dataset(again, seed=3, scenes=5, scene_size=256, tile_size=128, geotiffs=False,
                       workers=2)
    for s in SPLITS:
        rel = Path("tiles/list") / f"{s}_label.txt"
        assert (again / rel).read_text() == (dataset / rel).read_text()
    name = "scene_004_r0_c1.png"
    for sub in ("A", "B", "label"):
        assert np.array_equal(_read(again / "tiles" / sub / name),
                              _read(dataset / "tiles" / sub / name))
    assert not (again / "scenes").exists()


def test_split_counts() -> None:
    assert {k: len(v) for k, v in split_scenes(list("abc"), (0.7, 0.15, 0.15), 0).items()} == {
        "train": 1, "val": 1, "test": 1}
    assert split_scenes(["a"], (0.7, 0.15, 0.15), 0) == {"train": ["a"], "val": [], "test": []}
    split = split_scenes([f"s{i}" for i in range(20)], (0.7, 0.15, 0.15), 5)
    assert [len(split[s]) for s in SPLITS] == [14, 3, 3]


def test_cancelled_run_leaves_nothing(tmp_path: Path) -> None:
    class StopAfterFirst:
        def __init__(self) -> None:
            self.calls = 0

        def update(self, stage: str, done: int, total: int, message: str = "") -> None:
            self.calls += 1

        def is_cancelled(self) -> bool:
            return self.calls >= 1

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        write_tile_dataset(out, scenes=3, scene_size=64, tile_size=32, workers=1,
                           progress=StopAfterFirst())
    assert not out.exists()
    kept = tmp_path / "kept"
    write_tile_dataset(kept, scenes=1, scene_size=64, tile_size=32, workers=1)
    (kept / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(kept) for p in kept.rglob("*"))
    with pytest.raises(Cancelled):
        write_tile_dataset(kept, scenes=6, scene_size=64, tile_size=32, workers=2,
                           overwrite=True, progress=StopAfterFirst())
    assert sorted(p.relative_to(kept) for p in kept.rglob("*")) == before  # old run intact


@pytest.mark.parametrize("kwargs, message", [
    ({"tile_size": 256, "scene_size": 128}, "must not exceed"),
    ({"scenes": 0}, "at least 1"),
    ({"splits": (0.5, 0.5)}, "three non-negative"),
    ({"dtype": "float32"}, "uint8, uint16"),
])
def test_bad_dataset_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        write_tile_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_must_be_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_tile_dataset(tmp_path / "file", scenes=1, scene_size=64, tile_size=64)
    with pytest.raises(OutputError, match="not empty"):
        write_tile_dataset(tmp_path, scenes=1, scene_size=64, tile_size=64)


# ---------------------------------------------------------------- command line


def test_cli_writes_refuses_and_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["synth", str(out), "--scenes", "3", "--scene-size", "64", "--tile-size", "32",
            "--progress", "none", "--seed", "9", "--workers", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(list((out / "tiles" / "A").glob("*.png"))) == 12
    assert len(list((out / "scenes").glob("*_t1.tif"))) == 3
    assert (out / "synth.json").is_file()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 4 and "--overwrite" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--overwrite", "--dtype", "uint16"])
    assert result.exit_code == 0, result.output
    assert _read(out / "tiles" / "A" / "scene_000_r0_c0.png").dtype == np.uint16


@pytest.mark.parametrize("extra, message", [
    (["--tile-size", "128", "--scene-size", "64"], "must not exceed"),
    (["--epsg", "4326"], "projected"),
    (["--scenes", "0"], "at least 1"),
    (["--pixel-size", "-1"], "pixel size"),
])
def test_cli_bad_input_is_one_sentence(tmp_path: Path, extra: list, message: str) -> None:
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_nir_band_change_rate_and_labelling_rule(tmp_path: Path) -> None:
    from kdmsi_train.synth.writers import with_nir, write_tiles

    pair = make_scene_pair(4, 128)
    four = with_nir(pair.t1)
    assert four.shape == (4, 128, 128) and np.array_equal(four[:3], pair.t1)
    # grass, water and a grey roof of one brightness: bright, dark and neutral in the NIR
    rgb = np.array([[[60]], [[110]], [[40]]]) * np.ones((1, 1, 3))
    rgb[:, :, 1] = [[50], [45], [115]]
    rgb[:, :, 2] = [[70], [70], [70]]
    grass, water, roof = with_nir(rgb.astype(np.uint8))[3, 0]
    assert grass > roof > water
    paths = write_scene_pair(pair, tmp_path / "s", "s", bands=4, dtype="uint16")
    with rasterio.open(paths["t1"]) as ds:
        assert ds.count == 4 and ds.descriptions[3] == "nir" and ds.dtypes[0] == "uint16"
    any_pixel = write_tiles(pair, tmp_path / "a", "s", 32)
    strict = write_tiles(pair, tmp_path / "b", "s", 32, label_min_fraction=0.05)
    assert sum(strict.values()) < sum(any_pixel.values())
    for name, label in strict.items():
        with rasterio.open(tmp_path / "b" / "label" / name) as ds:
            fraction = (ds.read(1) > 0).mean()
        assert label == int(fraction > 0.05)
    more = sum(make_scene_pair(s, 128, change_rate=4.0).mask.mean() for s in range(6))
    fewer = sum(make_scene_pair(s, 128, change_rate=0.25).mask.mean() for s in range(6))
    assert more > fewer
