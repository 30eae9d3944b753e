"""Engines: torch and ONNX Runtime give the same detections, ``.onnx`` files are complete
models (card in the metadata), detection runs where torch cannot be imported, and the
shipped ONNX twin of the default model is the default checkpoint's current export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch

from kdmsi_core.checkpoint import (
    SEGMENTER,
    ModelCard,
    default_model_path,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from kdmsi_core.distributed import file_digest
from kdmsi_core.engine import META_SOURCE, OnnxEngine, choose, default_onnx_path, load_engine
from kdmsi_core.errors import OutputError, ParameterError
from kdmsi_core.export import export_onnx, onnx_bytes
from kdmsi_core.inference import infer_batch
from kdmsi_core.netconfig import NetworkConfig
from kdmsi_core.normalize import Normalization
from kdmsi_core.pipeline import detect
from kdmsi_core.segmenter import SiameseSegmenter
from kdmsi_train.synth import make_scene_pair
from tests.core.cli_runs import run_cli, run_without_torch
from tests.core.geodata import transform_for, write_tif

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generated aerial scene pair (buildings, roads, trees, changes), 0.5 m, UTM."""
    folder = tmp_path_factory.mktemp("real")
    pair = make_scene_pair(seed=31, size=320, pixel_size=0.5)
    t = transform_for(0.5)
    return (write_tif(folder / "t1.tif", pair.t1, transform=t),
            write_tif(folder / "t2.tif", pair.t2, transform=t))


def _probability(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1, masked=True)


def test_engines_agree_through_detect_on_a_real_pair(tmp_path: Path, real_pair) -> None:
    runs = {}
    for engine in ("torch", "onnxruntime"):
        s = detect(*real_pair, tmp_path / f"{engine}.gpkg", engine=engine, tile_size=128,
                   overlap=32)
        assert (s.engine, s.device) == (engine, "cpu")
        runs[engine] = s
    assert runs["torch"].model == default_model_path()
    assert runs["onnxruntime"].model == default_onnx_path()
    p_torch = _probability(runs["torch"].probability)
    p_onnx = _probability(runs["onnxruntime"].probability)
    assert (p_torch.mask == p_onnx.mask).all() and p_torch.count() > 0
    assert np.abs(p_torch - p_onnx).max() < TOLERANCE
    assert p_torch.std() > 1e-3  # a map with structure, not a constant that trivially agrees
    assert runs["torch"].polygons == runs["onnxruntime"].polygons


def test_auto_takes_onnxruntime_on_the_cpu_and_torch_on_a_gpu(tmp_path: Path) -> None:
    assert choose("auto", None, "cpu") == "onnxruntime"
    assert choose("auto", None, "cuda") == "torch"
    assert choose("auto", tmp_path / "m.safetensors", "auto") == (
        "torch" if torch.cuda.is_available() else "onnxruntime")
    assert choose("auto", tmp_path / "m.onnx", "cuda") == "onnxruntime"
    with pytest.raises(ParameterError, match="--engine torch cannot run"):
        choose("torch", tmp_path / "m.onnx", "cpu")


def test_export_then_load_round_trips_the_card_and_the_network(tmp_path: Path,
                                                               random_model: Path) -> None:
    out = tmp_path / "random.onnx"
    result = run_cli("export", random_model, "-o", out)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    engine = load_engine(out)
    assert isinstance(engine, OnnxEngine) and engine.path == out
    assert engine.card == read_card(random_model) == read_card(out)  # `kdmsi-geo info` too
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta[META_SOURCE] == file_digest(random_model)
    # dynamic axes: another batch and tile size than the traced ones
    rng = np.random.default_rng(0)
    t1, t2 = (rng.standard_normal((3, 3, 96, 80)).astype(np.float32) for _ in range(2))
    torch_engine = load_engine(random_model, "torch", "cpu")
    for scales in ((1.0,), (0.5, 1.25)):
        p_onnx = infer_batch(engine, t1, t2, scales)
        p_torch = infer_batch(torch_engine, t1, t2, scales)
        assert p_onnx.shape == (3, 96, 80)
        assert np.abs(p_onnx - p_torch).max() < TOLERANCE
    with pytest.raises(OutputError, match="exists"):
        export_onnx(random_model, out)


def test_a_segmenter_exports_like_a_cam_student(tmp_path: Path) -> None:
    card = ModelCard(NetworkConfig("resnet18n", "minus"), Normalization.for_dtype("uint8", 3),
                     128, 0.5, (1.0,), kind=SEGMENTER)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "seg.safetensors", SiameseSegmenter(card.network).eval(),
                           card)
    out = export_onnx(path, tmp_path / "seg.onnx")
    engine = load_engine(out)
    assert engine.card.kind == SEGMENTER
    network = load_checkpoint(path).model
    rng = np.random.default_rng(1)
    t1, t2 = (rng.standard_normal((2, 3, 80, 112)).astype(np.float32) for _ in range(2))
    with torch.inference_mode():
        expected = network(torch.from_numpy(t1), torch.from_numpy(t2)).numpy()
    logits = engine.network(t1, t2)
    assert logits.shape == expected.shape == (2, 1, 80, 112)
    assert np.abs(logits - expected).max() < TOLERANCE


def test_a_corrupt_or_foreign_onnx_file_is_exit_3_with_one_sentence(tmp_path: Path, pair,
                                                                     random_model: Path
                                                                     ) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(default_onnx_path().read_bytes()[:5000])
    foreign = tmp_path / "foreign.onnx"  # a valid network, but no kdmsi card
    foreign.write_bytes(onnx_bytes(load_checkpoint(random_model).model, read_card(random_model)))
    out = tmp_path / "out"
    out.mkdir()
    for model, words in ((corrupt, "is not a readable ONNX model"),
                         (foreign, "is an ONNX model but not a kdmsi-geo model")):
        result = run_cli("detect", *pair, "-o", out / "c.gpkg", "--model", model)
        assert result.returncode == 3, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0]
        assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


def test_detect_runs_without_torch_on_an_onnx_model(tmp_path: Path, real_pair) -> None:
    out = tmp_path / "c.gpkg"
    result = run_without_torch("detect", *real_pair, "-o", out, "--tile-size", "128",
                               "--overlap", "32", "--model", default_onnx_path(),
                               "--progress", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []  # no torch module loaded
    summary = json.loads(result.stdout.strip().splitlines()[-1])["summary"]
    assert summary["engine"] == "onnxruntime" and out.is_file()
    assert _probability(Path(summary["probability"])).count() > 0


def test_without_torch_training_and_checkpoints_say_what_to_install(tmp_path: Path, pair,
                                                                     random_model: Path
                                                                     ) -> None:
    result = run_without_torch("train", tmp_path, "-o", tmp_path / "m.safetensors")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("Error: Training needs PyTorch, which is not "
                                             "installed; pip install 'kdmsi-geo[torch]'.")
    result = run_without_torch("detect", *pair, "-o", tmp_path / "c.gpkg", "--model",
                               random_model, "--engine", "torch")
    assert result.returncode == 2 and "kdmsi-geo[torch]" in result.stderr.splitlines()[0]
    assert not (tmp_path / "c.gpkg").exists()


def test_without_torch_info_reads_checkpoint_and_onnx_cards() -> None:
    for model in (default_model_path(), default_onnx_path()):
        result = run_without_torch("info", model, "--json")
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["threshold"] == read_card(default_model_path()).threshold
        assert json.loads(result.stderr.strip().splitlines()[-1]) == []


def test_the_shipped_onnx_is_the_current_export_of_the_default_checkpoint() -> None:
    stale = "the shipped default.onnx is stale: run python scripts/export_default.py"
    meta = {p.key: p.value for p in onnx.load(str(default_onnx_path())).metadata_props}
    assert meta[META_SOURCE] == file_digest(default_model_path()), stale
    onnx_engine = load_engine(None, "onnxruntime", "cpu")
    assert onnx_engine.path == default_onnx_path()
    assert onnx_engine.card == read_card(default_model_path()), stale
    torch_engine = load_engine(None, "torch", "cpu")
    rng = np.random.default_rng(2)
    t1, t2 = (rng.standard_normal((2, 3, 64, 64)).astype(np.float32) for _ in range(2))
    diff = infer_batch(onnx_engine, t1, t2, (1.0,)) - infer_batch(torch_engine, t1, t2, (1.0,))
    assert np.abs(diff).max() < TOLERANCE, stale
