"""``kdmsi-geo detect`` as users and the QGIS plugin run it: JSON progress, summary, every
bad input (one sentence, non-zero exit, nothing left behind), Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from kdmsi_core.checkpoint import read_card
from kdmsi_core.cli.main import cli
from tests.core.geodata import ORIGIN, scene, texture, transform_for, write_tif

KDMSI = Path(sys.executable).with_name("kdmsi-geo")


def _run(*args: str):
    return CliRunner().invoke(cli, ["detect", *map(str, args)])


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_json_progress_lines_and_final_summary(tmp_path: Path, pair,
                                                difference_model: Path) -> None:
    out = tmp_path / "c.gpkg"
    result = _run(*pair, "-o", out, "--model", difference_model, "--progress", "json",
                  "--probability", tmp_path / "p.tif", "--tile-size", "64", "--overlap", "16")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for rec in lines[:-1]:
        assert set(rec) == {"stage", "done", "total", "message"}
        assert isinstance(rec["done"], int) and isinstance(rec["total"], int)
        assert 0 <= rec["done"] <= rec["total"] and isinstance(rec["message"], str)
    assert {"prepare", "detect", "vectorize", "write"} <= {r["stage"] for r in lines}
    last = lines[-1]
    assert (last["stage"], last["done"], last["total"]) == ("done", 1, 1)
    summary = last["summary"]
    assert summary["changes"] == str(out) and summary["probability"] == str(tmp_path / "p.tif")
    assert summary["mask"] is None and summary["polygons"] == 1
    assert summary["changed_area_m2"] > 1000 and summary["seconds"] > 0
    assert result.stderr == ""


def test_bar_mode_tells_where_the_default_probability_went(tmp_path: Path, pair,
                                                           random_model: Path) -> None:
    result = _run(*pair, "-o", tmp_path / "c.gpkg", "--model", random_model,
                  "--threshold", "0.99", "--scales", "1")
    assert result.exit_code == 0 and result.stdout == ""
    assert "c_probability.tif (default path)" in result.stderr
    cells = 2 * (read_card(random_model).map_stride * 1.0) ** 2  # the default: 2 cells, 1-m px
    assert f"change polygon(s) of at least {cells:.3g} m²," in result.stderr
    assert (tmp_path / "c_probability.tif").is_file()
    again = _run(*pair, "-o", tmp_path / "c.gpkg", "--model", random_model, "--overwrite",
                 "--progress", "none", "--scales", "1")
    assert again.exit_code == 0 and again.stdout == again.stderr == ""
    everything = _run(*pair, "-o", tmp_path / "c.gpkg", "--model", random_model,
                      "--overwrite", "--threshold", "0.99", "--scales", "1", "--min-area", "0")
    assert everything.exit_code == 0 and "change polygon(s), " in everything.stderr


def test_low_threshold_grows_changes_exactly_as_the_rule_on_the_whole_raster(
        tmp_path: Path) -> None:
    """The embedded model on a scene with changes; the mask with a lower threshold is the
    hysteresis rule applied to the whole probability raster, whatever the tiles and strips."""
    import rasterio

    from kdmsi_core.hysteresis import change_mask
    from kdmsi_core.outputs import PROBABILITY_NODATA

    t1, t2 = scene((300, 260), seed=4, changes=((40, 40, 100, 90), (180, 150, 230, 240)))
    a, b = write_tif(tmp_path / "a.tif", t1), write_tif(tmp_path / "b.tif", t2)
    common = (a, b, "--tile-size", "96", "--overlap", "16", "--progress", "none")
    assert _run(*common, "-o", tmp_path / "plain.gpkg", "--mask", tmp_path / "plain.tif",
                "--probability", tmp_path / "p.tif").exit_code == 0
    with rasterio.open(tmp_path / "p.tif") as src:
        prob = src.read(1)
    valid = prob != PROBABILITY_NODATA
    high = float(np.quantile(prob[valid], 0.98))
    low = high / 3
    result = _run(*common, "-o", tmp_path / "grown.gpkg", "--mask", tmp_path / "grown.tif",
                  "--probability", tmp_path / "p2.tif", "--threshold", str(high),
                  "--low-threshold", str(low), "--progress", "json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    assert summary["low_threshold"] == pytest.approx(low)
    with rasterio.open(tmp_path / "grown.tif") as src:
        grown = src.read(1)
        assert src.tags()["kdmsi_low_threshold"] == str(low)
    expected = change_mask(prob, high, low, valid)
    assert np.array_equal(grown[valid], expected[valid].astype(np.uint8))
    assert expected.sum() > (prob > high).sum()  # growth happened on this scene


def test_refinement_moves_outlines_onto_the_changes_and_is_recorded(tmp_path: Path) -> None:
    """The embedded model refines its maps (its card says so); on generated scenes the
    refined masks fit the true changes better than the raw ones (--refine-radius 0)."""
    import rasterio

    from kdmsi_train.synth import make_scene_pair, write_scene_pair

    hits = {"12": [0, 0, 0], "0": [0, 0, 0]}  # true positives, flagged, true pixels
    for seed in (3, 7):
        paths = write_scene_pair(make_scene_pair(seed, 320), tmp_path, f"s{seed}")
        with rasterio.open(paths["mask"]) as src:
            truth = src.read(1) > 0
        for radius in hits:
            extra = () if radius == "12" else ("--refine-radius", radius)
            out = tmp_path / f"{seed}-{radius}"
            result = _run(paths["t1"], paths["t2"], "-o", f"{out}.gpkg", "--mask",
                          f"{out}.tif", "--tile-size", "128", "--progress", "json", *extra)
            assert result.exit_code == 0, result.stderr
            summary = json.loads(result.stdout.splitlines()[-1])["summary"]
            assert summary["refine_radius"] == int(radius)
            with rasterio.open(f"{out}.tif") as src:
                assert src.tags()["kdmsi_refine_radius"] == radius
                change = src.read(1) == 1
            counts = hits[radius]
            counts[0] += int((change & truth).sum())
            counts[1] += int(change.sum())
            counts[2] += int(truth.sum())
    f1 = {r: 2 * tp / (flagged + true) for r, (tp, flagged, true) in hits.items()}
    assert f1["12"] > f1["0"] + 0.01, f1


def _bad_cases(tmp: Path, pair: tuple[Path, Path], model: Path) -> list:
    text = tmp / "notes.tif"
    text.write_text("hello")
    fake_model = tmp / "fake.safetensors"
    save_file({"w": __import__("torch").zeros(2)}, fake_model)
    nocrs = write_tif(tmp / "nocrs.tif", scene()[0], crs=None)
    far = write_tif(tmp / "far.tif", scene()[1],
                    transform=transform_for(origin=(ORIGIN[0] + 5000, ORIGIN[1])))
    four = write_tif(tmp / "four.tif", texture((160, 160), 1, bands=4),
                     photometric="MINISBLACK")
    (tmp / "exists.gpkg").write_text("old")
    t1, t2 = pair
    out = tmp / "new.gpkg"
    m = ("--model", model)
    return [
        ((tmp / "nope.tif", t2, "-o", out, *m), 2, "does not exist"),
        ((t1, text, "-o", out, *m), 2, "is not a raster"),
        ((t1, nocrs, "-o", out, *m), 2, "no coordinate reference system"),
        ((t1, far, "-o", out, *m), 2, "do not overlap"),
        ((t1, four, "-o", out, *m), 2, "expects 3; choose them with --bands"),
        ((t1, four, "-o", out, "--bands", "1,2,5", *m), 2, "--bands 5 is out of range"),
        ((t1, t2, "-o", out, "--bands", "1,x", *m), 2, "not a comma-separated list"),
        ((t1, t2, "-o", tmp / "nodir" / "c.gpkg", *m), 4, "does not exist; create it"),
        ((t1, t2, "-o", tmp / "exists.gpkg", *m), 4, "already exists; use --overwrite"),
        ((t1, t2, "-o", out, "--probability", tmp / "p.png", *m), 4, "must be a GeoTIFF"),
        ((t1, t2, "-o", tmp / "c.shp", *m), 4, "must be a GeoPackage"),
        ((t1, t2, "-o", out, "--threshold", "1.5", *m), 2, "outside 0..1"),
        ((t1, t2, "-o", out, "--threshold", "-0.1", *m), 2, "outside 0..1"),
        ((t1, t2, "-o", out, "--low-threshold", "1.5", *m), 2, "outside 0..1"),
        ((t1, t2, "-o", out, "--threshold", "0.3", "--low-threshold", "0.5", *m), 2,
         "above the threshold 0.3"),
        ((t1, t2, "-o", out, "--refine-radius", "65", *m), 2, "--refine-radius 65 is not"),
        # refused before a model is looked for
        ((t1, t2, "-o", out, "--refine-radius", "-1", "--model", tmp / "none.safetensors"), 2,
         "--refine-radius -1 is not"),
        ((t1, t2, "-o", out, "--tile-size", "8", *m), 2, "smaller than the network's"),
        ((t1, t2, "-o", out, "--tile-size", "64", "--overlap", "64", *m), 2,
         "must be smaller than --tile-size"),
        ((t1, t2, "-o", out, "--scales", "0,1", *m), 2, "positive factors"),
        ((t1, t2, "-o", out, "--model", fake_model), 3, "not a kdmsi-geo checkpoint"),
        ((t1, t2, "-o", out, "--model", text), 3, "not a kdmsi-geo checkpoint"),
        ((t1, t2, "-o", out, "--model", tmp / "none.safetensors"), 3, "does not exist"),
    ]


def test_every_bad_input_is_one_sentence_nonzero_and_leaves_nothing(
        tmp_path: Path, pair, random_model: Path) -> None:
    cases = _bad_cases(tmp_path, pair, random_model)
    before = _listing(tmp_path)
    for args, code, words in cases:
        result = _run(*args)
        message = result.stderr.strip()
        assert result.exit_code == code, (args, result.stderr)
        assert message.startswith("Error: ") and words in message, message
        assert "\n" not in message and "Traceback" not in message
        assert message.endswith(".") and message.count(". ") == 0, message
        assert _listing(tmp_path) == before, args


def _run_unprivileged(*args) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; as an unprivileged user when the tests run as root, since
    root may read and write everything."""
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)

    return subprocess.run([sys.executable, "-m", "kdmsi_core.cli.main", "detect",
                           *map(str, args)], capture_output=True, text=True,
                          preexec_fn=drop, check=False)


def test_unreadable_input_and_unwritable_folder(tmp_path_factory, pair,
                                                random_model: Path) -> None:
    shared = tmp_path_factory.mktemp("unprivileged")
    shared.chmod(0o777)
    for p in (shared.parent, shared.parent.parent):
        p.chmod(p.stat().st_mode | 0o755)
    a, b = shared / "t1.tif", shared / "t2.tif"
    model = shared / "m.safetensors"
    for src, dst in ((pair[0], a), (pair[1], b), (random_model, model)):
        dst.write_bytes(src.read_bytes())
        dst.chmod(0o644)
    b.chmod(0)
    result = _run_unprivileged(a, b, "-o", shared / "c.gpkg", "--model", model)
    assert result.returncode == 2 and "permission denied" in result.stderr, result.stderr
    b.chmod(0o644)
    locked = shared / "locked"
    locked.mkdir(mode=0o555)
    result = _run_unprivileged(a, b, "-o", locked / "c.gpkg", "--model", model)
    assert result.returncode == 4 and "not writable" in result.stderr, result.stderr
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_output_and_no_temporaries(tmp_path: Path,
                                                             random_model: Path,
                                                             sig: int) -> None:
    t1, t2 = scene((512, 512))
    a, b = write_tif(tmp_path / "t1.tif", t1), write_tif(tmp_path / "t2.tif", t2)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}
    proc = subprocess.Popen(
        [str(KDMSI), "detect", str(a), str(b), "-o", str(out / "c.gpkg"), "--mask",
         str(out / "m.tif"), "--model", str(random_model), "--tile-size", "64",
         "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    for line in proc.stdout:
        rec = json.loads(line)
        if rec["stage"] == "detect" and rec["done"] > 0:
            assert any(p.name.startswith(".kdmsi-") for p in out.iterdir())  # staging exists
            proc.send_signal(sig)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err.startswith("Error: ") and "no outputs were written" in err
    assert list(out.iterdir()) == []


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["detect", "--help"])
    for option in ("--model", "--probability", "--mask", "--threshold", "--low-threshold",
                   "--refine-radius", "--min-area",
                   "--tile-size", "--overlap", "--batch-size", "--scales", "--bands",
                   "--device", "--overwrite", "--progress"):
        assert option in result.stdout
    assert np.all([result.exit_code == 0])
