"""The hostile-input matrix: broken inputs, options, checkpoints, outputs, signals,
concurrent runs and full disks, each answered by one sentence and the right exit code, and
over every case the two guarantees: no input file changes, and the old outputs change only
when --overwrite is given and the run completes (see :mod:`tests.core.hostile`)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kdmsi_core.errors import OutputError
from kdmsi_core.outputs import Staging
from kdmsi_core.pipeline import detect
from kdmsi_core.raster import absolute
from tests.core.geodata import scene, texture, write_tif
from tests.core.hostile import (
    KDMSI,
    OLD,
    Workspace,
    assert_sentence,
    edited_checkpoint,
    float_pair,
    invoke,
    probability_stats,
)

Case = Callable[[Workspace], tuple[list[str], int, str]]


@pytest.fixture
def ws(tmp_path: Path, difference_model: Path) -> Workspace:
    return Workspace.make(tmp_path, difference_model)


# --- inputs -----------------------------------------------------------------------------

def truncated_geotiff(ws: Workspace):
    data = ws.inp.joinpath("t1.tif").read_bytes()
    cut = ws.inp / "cut.tif"
    cut.write_bytes(data[:len(data) * 6 // 10])
    return ws.detect_args(t1=cut), 2, "truncated or damaged"


def t2_all_nodata(ws: Workspace):
    empty = write_tif(ws.inp / "empty.tif", np.zeros((3, 160, 160), np.uint8), nodata=0)
    return ws.detect_args(t2=empty), 2, "no valid pixel in common"


def crs_without_geotransform(ws: Workspace):
    bare = ws.inp / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=160, height=160, count=3,
                       dtype="uint8", crs="EPSG:32633") as dst:
        dst.write(scene()[1])
    return ws.detect_args(t2=bare), 2, "coordinate reference system but no geotransform"


def png_without_georeferencing(ws: Workspace):
    png = ws.inp / "t2.png"
    with rasterio.open(png, "w", driver="PNG", width=160, height=160, count=3,
                       dtype="uint8") as dst:
        dst.write(scene()[1])
    return ws.detect_args(t2=png), 2, "is not georeferenced (no coordinate reference system"


def one_band_raster(ws: Workspace):
    gray = write_tif(ws.inp / "gray.tif", scene()[1][:1])
    return ws.detect_args(t2=gray), 2, "a model trained on 1-band data"


def vsicurl_path_kept(ws: Workspace):
    url = "/vsicurl/http://127.0.0.1:9/t1.tif"
    return ws.detect_args(t1=url), 2, url


def vrt_source_as_output(ws: Workspace):
    vrt = ws.inp / "t1.vrt"
    with rasterio.open(ws.inp / "t1.tif") as src:
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
            f'relativeToVRT="1">t1.tif</SourceFilename><SourceBand>{b}</SourceBand>'
            '</SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
        vrt.write_text(f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
                       f"<SRS>{src.crs.to_wkt()}</SRS><GeoTransform>"
                       f"{', '.join(str(v) for v in src.transform.to_gdal())}</GeoTransform>"
                       f"{bands}</VRTDataset>")
    return (ws.detect_args("--probability", ws.inp / "t1.tif", t1=vrt), 4,
            "is one of the input rasters")


def symlink_to_input_as_output(ws: Workspace):
    os.symlink(ws.inp / "t2.tif", ws.out / "link.tif")
    return (ws.detect_args("--probability", ws.out / "link.tif"), 4,
            "is one of the input rasters")


def hardlink_to_input_as_output(ws: Workspace):
    os.link(ws.inp / "t2.tif", ws.out / "hard.tif")
    return (ws.detect_args("--probability", ws.out / "hard.tif"), 4,
            "is one of the input rasters")


# --- options ----------------------------------------------------------------------------

def option(*extra: str, code: int = 2, words: str) -> Case:
    def case(ws: Workspace):
        return ws.detect_args(*extra), code, words
    case.__name__ = "option " + " ".join(extra)
    return case


# --- checkpoints ------------------------------------------------------------------------

def card(edit, words: str = "out of range") -> Case:
    def case(ws: Workspace):
        bad = edited_checkpoint(ws.model, ws.inp / "bad.safetensors", edit)
        return ws.detect_args("--model", bad), 3, words
    return case


def _set(d: dict, key: str, value) -> dict:
    d[key] = value
    return d


def _std_zero(d: dict) -> dict:
    d["normalization"]["std"] = [0.0, 0.5, 0.5]
    return d


# --- outputs ----------------------------------------------------------------------------

def folder_as(flag: str) -> Case:
    def case(ws: Workspace):
        folder = ws.out / ("f.gpkg" if flag == "-o" else "f.tif")
        folder.mkdir()
        args = ws.detect_args()
        if flag in args:
            args[args.index(flag) + 1] = str(folder)
        else:
            args += [flag, str(folder)]
        return args, 4, "is a folder"
    return case


def existing_without_overwrite(ws: Workspace):
    return ws.detect_args(overwrite=False), 4, "already exists; use --overwrite"


def output_in_use(ws: Workspace):
    """Another run holds the lock of the polygon output."""
    lock = os.open(ws.out / ".c.gpkg.kdmsi-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    ws.cleanup = lambda: os.close(lock)  # released after the run
    return ws.detect_args(), 4, "is in use by another kdmsi-geo run"


CASES: dict[str, Case] = {
    "truncated GeoTIFF": truncated_geotiff,
    "t2 all nodata": t2_all_nodata,
    "CRS without geotransform": crs_without_geotransform,
    "PNG without georeferencing": png_without_georeferencing,
    "1-band raster": one_band_raster,
    "/vsicurl/ path": vsicurl_path_kept,
    "VRT source as output": vrt_source_as_output,
    "symlink to input as output": symlink_to_input_as_output,
    "hard link to input as output": hardlink_to_input_as_output,
    "scales 1e9": option("--scales", "1e9", words="positive factors from 0.125 to 4"),
    "scales inf": option("--scales", "inf", words="positive factors from 0.125 to 4"),
    "scales nan": option("--scales", "nan", words="positive factors from 0.125 to 4"),
    "scales -1": option("--scales", "-1", words="positive factors from 0.125 to 4"),
    "scales 1,,2": option("--scales", "1,,2", words="not a comma-separated list"),
    "scales empty": option("--scales", "", words="not a comma-separated list"),
    "bands 1,,3": option("--bands", "1,,3", words="not a comma-separated list"),
    "min-area nan": option("--min-area", "nan", words="--min-area nan is not an area"),
    "min-area inf": option("--min-area", "inf", words="--min-area inf is not an area"),
    "min-area -1": option("--min-area", "-1", words="is not an area"),
    "threshold nan": option("--threshold", "nan", words="outside 0..1"),
    "device cuda:5": option("--device", "cuda:5", words="--device cuda:5"),
    "device tpu": option("--device", "tpu", words="Unknown device"),
    "card std 0": card(_std_zero, "std [0.0, 0.5, 0.5] must be positive"),
    "card scales [-1]": card(lambda d: _set(d, "scales", [-1]), "MSI scales [-1.0]"),
    "card scales []": card(lambda d: _set(d, "scales", []), "MSI scales []"),
    "card scales 1e9": card(lambda d: _set(d, "scales", [1e9]), "MSI scales"),
    "card threshold 5": card(lambda d: _set(d, "threshold", 5), "threshold 5.0 is outside"),
    "card threshold nan": card(lambda d: _set(d, "threshold", float("nan")), "threshold"),
    "card is a list": card(lambda d: [d], "is not a JSON object"),
    "card high = low": card(lambda d: _set(d, "normalization", {
        **d["normalization"], "high": [0.0, 255.0, 255.0]}), "high value not above"),
    "card short normalisation": card(lambda d: _set(d, "normalization", {
        **d["normalization"], "mean": [0.5]}), "one value per band"),
    "-o is a folder": folder_as("-o"),
    "--mask is a folder": folder_as("--mask"),
    "--probability is a folder": folder_as("--probability"),
    "existing output without --overwrite": existing_without_overwrite,
    "output in use by another run": output_in_use,
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name: str, ws: Workspace) -> None:
    ws.cleanup = lambda: None
    args, code, words = CASES[name](ws)
    ws.freeze()
    try:
        outcome = invoke(["detect", *args])
    finally:
        ws.cleanup()
    assert_sentence(outcome, code, words)
    assert not [w for w in outcome.warned if "NotGeoreferenced" in w], outcome.warned
    ws.check(completed=False)


# --- inputs that must work --------------------------------------------------------------

@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_a_nan_pixel_is_nodata_for_that_pixel_only(ws: Workspace, nodata) -> None:
    (ws.root / "clean").mkdir()
    c1, c2 = float_pair(ws.root / "clean", None, None)
    reference = invoke(["detect", str(c1), str(c2), "-o", str(ws.root / "clean" / "r.gpkg"),
                        "--model", str(ws.model), "--tile-size", "64", "--progress", "json"])
    assert reference.code == 0, reference.stderr
    f1, f2 = float_pair(ws.inp, (80, 30), nodata)
    ws.freeze()
    outcome = invoke(["detect", *ws.detect_args("--progress", "json", t1=f1, t2=f2)])
    assert outcome.code == 0, outcome.stderr
    summary = json.loads(outcome.stdout.splitlines()[-1])["summary"]
    expected = json.loads(reference.stdout.splitlines()[-1])["summary"]
    assert summary["polygons"] == expected["polygons"] == 1
    valid, nans = probability_stats(ws.out / "c_probability.tif")
    assert nans == 0 and valid == 160 * 160 - 1
    ws.check(completed=True)


def test_gdal_virtual_paths_are_opened_as_given(ws: Workspace) -> None:
    archive = ws.inp / "pair.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(ws.inp / "t1.tif", "t1.tif")
    ws.freeze()
    outcome = invoke(["detect", *ws.detect_args(t1=f"/vsizip/{archive}/t1.tif")])
    assert outcome.code == 0, outcome.stderr
    ws.check(completed=True)
    missing = invoke(["detect", *ws.detect_args(t1=f"/vsizip//{archive}/none.tif")])
    assert_sentence(missing, 2, f"/vsizip//{archive}/none.tif")


def test_dask_workers_get_virtual_paths_intact(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute("/vsizip//data/pair.zip/t1.tif") == "/vsizip//data/pair.zip/t1.tif"
    assert absolute("/vsicurl/http://host/t1.tif") == "/vsicurl/http://host/t1.tif"
    assert absolute("t1.tif") == str(tmp_path.resolve() / "t1.tif")


def test_output_replaced_only_when_the_run_completes(ws: Workspace) -> None:
    ws.freeze()
    outcome = invoke(["detect", *ws.detect_args()])
    assert outcome.code == 0, outcome.stderr
    ws.check(completed=True)


# --- a commit that fails part-way -------------------------------------------------------

class _MakeFolderOnWrite:
    """Progress that creates a folder at ``path`` once the outputs are written, as another
    program might while the run goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        if stage == "write" and done == 1:
            self.path.mkdir()

    def is_cancelled(self) -> bool:
        return False


def test_a_folder_appearing_at_an_output_path_keeps_the_old_outputs(ws: Workspace) -> None:
    ws.freeze()
    with pytest.raises(OutputError, match="A folder appeared at the output path"):
        detect(ws.inp / "t1.tif", ws.inp / "t2.tif", ws.out / "c.gpkg",
               mask=ws.out / "new.tif", model=ws.model, tile_size=64, overwrite=True,
               progress=_MakeFolderOnWrite(ws.out / "new.tif"))
    (ws.out / "new.tif").rmdir()
    ws.check(completed=False)


def test_a_move_failing_part_way_puts_every_old_output_back(ws: Workspace) -> None:
    targets = [ws.out / "c.gpkg", ws.out / "c_probability.tif", ws.out / "m.tif"]
    ws.freeze()
    with pytest.raises(OutputError, match="previous files are unchanged"), \
            Staging(targets) as staging:
        for t in targets[:2]:
            staging.staged(t).write_bytes(b"new")  # m.tif is never staged: its move fails
        staging.commit()
    ws.check(completed=False)


# --- evaluate and train on broken tiles ---------------------------------------------------

def _tiles(root: Path, bands: int, suffix: str = ".tif", count: int = 2) -> Path:
    for sub in ("A", "B", "label", "list"):
        (root / sub).mkdir(parents=True)
    names = []
    for i in range(count):
        name = f"t{i}{suffix}"
        a = texture((64, 64), i, bands=bands)
        driver = "PNG" if suffix == ".png" else "GTiff"
        for sub, data in (("A", a), ("B", a), ("label", np.zeros((1, 64, 64), np.uint8))):
            with rasterio.open(root / sub / name, "w", driver=driver, width=64, height=64,
                               count=data.shape[0], dtype="uint8") as dst:
                dst.write(data)
        names.append(name)
    for split in ("train", "val", "test"):
        (root / "list" / f"{split}_label.txt").write_text(
            "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    return root


@pytest.mark.parametrize("bands", [4, 1])
def test_evaluate_refuses_a_model_of_another_band_count(tmp_path: Path, random_model: Path,
                                                         bands: int) -> None:
    data = _tiles(tmp_path / "data", bands)
    outcome = invoke(["evaluate", str(data), "--model", str(random_model), "--device", "cpu"])
    assert_sentence(outcome, 2, f"have {bands} band(s) but the model")


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_a_truncated_png_tile_is_named(tmp_path: Path, random_model: Path,
                                       command: str) -> None:
    data = _tiles(tmp_path / "data", 3, ".png")
    tile = data / "B" / "t1.png"
    tile.write_bytes(tile.read_bytes()[:-40])
    before = (tmp_path / "data").stat().st_mtime
    args = (["evaluate", str(data), "--model", str(random_model)] if command == "evaluate"
            else ["train", str(data), "-o", str(tmp_path / "m.safetensors"), "--epochs", "1"])
    outcome = invoke([*args, "--device", "cpu"])
    assert_sentence(outcome, 2, f"The tile {tile} is truncated")
    assert not (tmp_path / "m.safetensors").exists()
    assert (tmp_path / "data").stat().st_mtime == before


# --- stale staging folders ----------------------------------------------------------------

def test_stale_staging_folders_are_removed_live_ones_kept(ws: Workspace) -> None:
    stale = ws.out / ".kdmsi-dead.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / "scratch-probability.tif").write_bytes(b"x" * 100)
    live = ws.out / ".kdmsi-live.tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        outcome = invoke(["detect", *ws.detect_args()])
    finally:
        os.close(fd)
    assert outcome.code == 0, outcome.stderr
    assert not stale.exists() and live.is_dir()


def _spawn(*args: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}
    return subprocess.Popen([str(KDMSI), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _big_pair(ws: Workspace, size: int = 480) -> list[str]:
    t1, t2 = scene((size, size))
    a, b = write_tif(ws.inp / "big1.tif", t1), write_tif(ws.inp / "big2.tif", t2)
    args = ws.detect_args(t1=a, t2=b)
    args[args.index("--progress") + 1] = "json"
    return ["detect", *args]


def _wait_for(proc: subprocess.Popen, stage: str | None, done: int = 0) -> None:
    """Read progress lines until ``stage`` (any stage for None) reports ``done``."""
    for line in proc.stdout:
        rec = json.loads(line)
        if stage in (None, rec["stage"]) and rec["done"] >= done:
            return
    raise AssertionError(f"the run ended before stage {stage}: {proc.stderr.read()}")


def test_sigkill_leftover_is_cleaned_by_the_next_run(ws: Workspace) -> None:
    proc = _spawn(*_big_pair(ws))
    _wait_for(proc, "detect", 1)
    proc.kill()
    proc.wait(timeout=60)
    left = [p for p in ws.out.iterdir() if p.name.startswith(".kdmsi-") and p.is_dir()]
    assert left, "SIGKILL left no staging folder to clean"
    outcome = invoke(["detect", *ws.detect_args()])
    assert outcome.code == 0, outcome.stderr
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in ws.out.iterdir()) == sorted(OLD)


# --- signals -------------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "delay", "sig"), [
    ("detect", 0.0, signal.SIGINT),
    ("vectorize", 0.0, signal.SIGTERM),
    ("write", 0.2, signal.SIGINT),
    ("write", 0.4, signal.SIGTERM),
])
def test_a_signal_at_any_stage_ends_with_a_sentence(ws: Workspace, stage: str, delay: float,
                                                     sig: int) -> None:
    args = _big_pair(ws)
    ws.freeze()
    proc = _spawn(*args)
    _wait_for(proc, stage)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the run had finished before the signal came
        ws.check(completed=True)
        return
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: The run was stopped by "), err
    ws.check(completed="after its outputs were complete" in err)


def _train_data(tmp_path: Path) -> Path:
    return _tiles(tmp_path / "data", 3)


@pytest.mark.parametrize(("command", "sig"), [("train", signal.SIGTERM),
                                            ("evaluate", signal.SIGINT)])
def test_train_and_evaluate_stop_alike_on_signals(tmp_path: Path, random_model: Path,
                                                  command: str, sig: int) -> None:
    model = tmp_path / "m.safetensors"
    if command == "train":
        args = ["train", _train_data(tmp_path), "-o", model, "--epochs", "500", "--progress",
                "json"]
    else:  # enough single-tile batches to outlast the 3 s wait on a fast, idle machine
        data = _tiles(tmp_path / "data", 3, count=1500)
        args = ["evaluate", data, "--model", random_model, "--batch-size", "1"]
    proc = _spawn(*args, "--device", "cpu")
    if command == "train":
        _wait_for(proc, None, 1)  # training has started
    else:
        time.sleep(3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if command == "evaluate" and proc.returncode == 0:
        pytest.fail("evaluate finished before the signal; the test needs a longer run")
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("Error: The run was stopped by "), err
    assert not model.exists()


# --- concurrency -----------------------------------------------------------------------------

def test_a_second_run_into_the_same_output_is_refused(ws: Workspace) -> None:
    args = _big_pair(ws)
    ws.freeze()
    first = _spawn(*args)
    _wait_for(first, "detect", 1)
    second = invoke(["detect", *ws.detect_args()])
    assert_sentence(second, 4, "is in use by another kdmsi-geo run")
    first.communicate(timeout=120)
    assert first.returncode == 0
    ws.check(completed=True)


# --- full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk():
    """A tmpfs of a few hundred kB, mounted as root; skipped where mounting is not allowed.
    It lies outside pytest's temporary folders, which other test runs may move or delete."""
    mount = Path(tempfile.mkdtemp(prefix="kdmsi-disk-"))

    def mount_size(kb: int) -> Path:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs",
                              str(mount)], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not allowed here: {run.stderr.strip()}")
        return mount

    yield mount_size
    subprocess.run(["umount", str(mount)], capture_output=True, check=False)
    mount.rmdir()


@pytest.mark.parametrize(("kb", "where"), [(48, "staging"), (140, "scratch rasters"),
                                          (320, "GeoPackage"), (600, "COG")])
def test_a_full_disk_is_an_output_error_leaving_no_partial_file(
        ws: Workspace, small_disk, random_model: Path, kb: int, where: str) -> None:
    """Sizes that fill the disk at each write stage (measured with this scene and model)."""
    disk = small_disk(kb)
    (disk / "c.gpkg").write_bytes(OLD["c.gpkg"])
    before = sorted(p.name for p in disk.iterdir())
    t1, t2 = scene((320, 320))
    a, b = write_tif(ws.inp / "a.tif", t1), write_tif(ws.inp / "b.tif", t2)
    ws.freeze()
    outcome = invoke(["detect", str(a), str(b), "-o", str(disk / "c.gpkg"), "--model",
                      str(random_model), "--tile-size", "64", "--overwrite", "--progress",
                      "none"])
    assert_sentence(outcome, 4, f"The disk holding {disk} is full")
    assert sorted(p.name for p in disk.iterdir()) == before
    assert (disk / "c.gpkg").read_bytes() == OLD["c.gpkg"]
    ws.check(completed=False)
