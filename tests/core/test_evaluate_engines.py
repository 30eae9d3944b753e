"""Evaluation where only ``kdmsi-geo[onnx]`` is installed: both model kinds run on ONNX
Runtime and count exactly the pixels and objects the torch engine counts; only the teacher
CAM asks for torch. ONNX Runtime prints nothing where the home folder is not writable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdmsi_core.checkpoint import default_model_path, read_card
from kdmsi_core.engine import default_onnx_path
from kdmsi_core.errors import ParameterError
from kdmsi_core.export import export_onnx
from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset
from tests.core.cli_runs import cli_env, run_without_torch
from tests.core.geodata import difference_segmenter

SPLIT = ("--split", "train")  # one scene: all its tiles land in the training split


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated 256-px scene: its GeoTIFF pair (scenes/) and four 128-px tiles with
    masks (tiles/), on which both the default model and the segmenter find change."""
    out = tmp_path_factory.mktemp("synth")
    write_tile_dataset(out, seed=5, scenes=1, scene_size=256, tile_size=128)
    return out


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A second-stage checkpoint and its ONNX export."""
    folder = tmp_path_factory.mktemp("segmenter")
    checkpoint = difference_segmenter(folder / "seg.safetensors")
    return checkpoint, export_onnx(checkpoint, folder / "seg.onnx")


def test_evaluate_runs_without_torch_and_counts_like_torch(synth: Path, segmenter) -> None:
    tiles = synth / "tiles"
    cases = ((None, default_onnx_path(), ()),  # engine auto: the default model's ONNX twin
             (segmenter[0], segmenter[1], ("--model", segmenter[1], "--engine", "onnxruntime")))
    for checkpoint, onnx_model, options in cases:
        result = run_without_torch("evaluate", tiles, *SPLIT, "--batch-size", "2", "--json",
                                   *options)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stderr.strip().splitlines()[-1]) == []  # no torch loaded
        got = json.loads(result.stdout)
        assert got["model"] == str(onnx_model)
        expected = evaluate(tiles, checkpoint, "train", batch_size=2, engine="torch")["methods"]
        if checkpoint is None:  # the first stage the embedded model carries needs torch
            assert "stage1_msi" not in got["methods"] and expected.pop("stage1_msi")
        assert got["methods"] == expected  # the same counts, so the same ratios
        for method in got["methods"].values():  # maps with structure, not trivially equal
            assert min(method["tp"], method["fp"], method["fn"], method["objects_hit"]) > 0


def test_the_teacher_cam_alone_needs_torch_and_a_checkpoint(synth: Path, segmenter) -> None:
    result = run_without_torch("evaluate", synth / "tiles", *SPLIT, "--teacher")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "Error: Evaluating the teacher CAM (--teacher) needs PyTorch, which is not installed; "
        "pip install 'kdmsi-geo[torch]'.")
    with pytest.raises(ParameterError, match="seg.onnx holds no teacher"):
        evaluate(synth / "tiles", segmenter[1], "train", teacher=True)
    # the embedded segmenter's teacher is the one its first stage carries
    methods = evaluate(synth / "tiles", None, "train", teacher=True, engine="torch")["methods"]
    assert methods["teacher_cam"]["threshold"] == read_card(
        default_model_path(), first_stage=True).training["teacher_threshold"]
    assert {"msi", "msi_raw", "single", "stage1_msi", "teacher_cam"} == set(methods)


def test_a_lower_threshold_grows_the_students_masks_only(synth: Path) -> None:
    tiles = synth / "tiles"
    plain = evaluate(tiles, None, "train", engine="torch")["methods"]
    t = plain["msi"]["threshold"]
    assert plain["msi"]["low_threshold"] == t
    # the refined maps are cut at the card's threshold for them, the raw ones at the card's
    card = read_card(default_model_path())
    assert t == card.refine.threshold and plain["msi_raw"]["threshold"] == card.threshold
    given = evaluate(tiles, None, "train", engine="torch", threshold=0.5)["methods"]
    assert given["msi"]["threshold"] == given["msi_raw"]["threshold"] == 0.5
    grown = evaluate(tiles, None, "train", engine="torch", low_threshold=t / 3)["methods"]
    assert grown["msi"]["low_threshold"] == t / 3
    assert grown["msi"]["tp"] + grown["msi"]["fp"] > plain["msi"]["tp"] + plain["msi"]["fp"]
    assert grown["msi"]["tp"] >= plain["msi"]["tp"] and grown["msi"]["fn"] <= plain["msi"]["fn"]
    assert grown["stage1_msi"] == plain["stage1_msi"]
    with pytest.raises(ParameterError, match="above the threshold"):
        evaluate(tiles, None, "train", engine="torch", low_threshold=min(1.0, 2 * t))


def _run_homeless(home: Path, *args: object) -> subprocess.CompletedProcess:
    """The CLI with ``home`` as its home folder and ONNX Runtime's telemetry as installed;
    as an unprivileged user when the tests run as root, who may write everywhere."""
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)

    env = {k: v for k, v in cli_env().items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    return subprocess.run([sys.executable, "-m", "kdmsi_core.cli.main", *map(str, args)],
                          capture_output=True, text=True, env={**env, "HOME": str(home)},
                          preexec_fn=drop, check=False)


def test_onnxruntime_prints_nothing_where_home_is_not_writable(
        tmp_path_factory: pytest.TempPathFactory, synth: Path) -> None:
    for folder in (synth, synth.parent, synth.parent.parent):
        folder.chmod(folder.stat().st_mode | 0o755)
    home = tmp_path_factory.mktemp("home")
    home.chmod(0o555)
    out = tmp_path_factory.mktemp("out")
    out.chmod(0o777)
    scenes = synth / "scenes"
    runs = (("detect", scenes / "scene_000_t1.tif", scenes / "scene_000_t2.tif", "-o",
             out / "c.gpkg", "--model", default_onnx_path(), "--progress", "none"),
            ("evaluate", synth / "tiles", *SPLIT, "--json"))
    for args in runs:
        result = _run_homeless(home, *args)
        assert result.returncode == 0, result.stderr
        assert "onnxruntime" not in result.stderr.lower(), result.stderr
    assert list(home.iterdir()) == []
