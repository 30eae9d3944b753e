"""The stage-2 segmenter: shapes, full-resolution output, and its place in the checkpoint
contract (the card names the kind; old cards are CAM students; unknown kinds are refused)."""

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from kdmsi_core.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from kdmsi_core.cli.main import cli
from kdmsi_core.errors import CheckpointError
from kdmsi_core.model import NetworkConfig, SiameseCAM, for_inference
from kdmsi_core.msi import msi
from kdmsi_core.normalize import Normalization
from kdmsi_core.pipeline import detect
from kdmsi_core.segmenter import SiameseSegmenter


def _card(network: NetworkConfig, kind: str) -> ModelCard:
    return ModelCard(network, Normalization.for_dtype("uint8", network.in_channels), 128, 0.3,
                     scales=(1.0,), kind=kind)


@pytest.mark.parametrize("backbone,combination,strides", [
    ("resnet18n", "minus", (2, 2, 2, 1)), ("resnet18n", "cat", (2, 2, 1, 1)),
    ("resnet50", "abs", (2, 2, 2, 1))])
def test_logits_at_full_resolution_for_any_tile_shape(backbone, combination, strides):
    torch.manual_seed(0)
    net = SiameseSegmenter(NetworkConfig(backbone, combination, 4, strides)).eval()
    x1, x2 = torch.randn(2, 4, 72, 40), torch.randn(2, 4, 72, 40)
    with torch.inference_mode():
        y = net(x1, x2)
    assert y.shape == (2, 1, 72, 40)
    assert y.std() > 0


def test_batchnorm_folding_keeps_outputs():
    torch.manual_seed(1)
    net = SiameseSegmenter(NetworkConfig(combination="abs"))
    net.train()
    x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    net(x1, x2)  # move the running statistics away from their initial values
    net.eval()
    with torch.inference_mode():
        before = net(x1, x2)
        folded = for_inference(net, torch.device("cpu"))
        after = folded(x1, x2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(before, after, atol=1e-4)


def test_kind_round_trip(tmp_path):
    torch.manual_seed(0)
    seg = SiameseSegmenter(NetworkConfig(combination="minus")).eval()
    path = save_checkpoint(tmp_path / "seg.safetensors", seg, _card(seg.config, "segmenter"))
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, SiameseSegmenter)
    assert read_card(path).kind == "segmenter"
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(seg(x1, x2), loaded.model(x1, x2))
        p = msi(loaded.model, x1, x2, (0.75, 1.0))
    assert p.shape == (2, 1, 64, 64) and p.min() >= 0 and p.max() <= 1
    with pytest.raises(CheckpointError, match="no teacher"):
        load_checkpoint(path, teacher=True)


def test_card_without_kind_is_a_cam_student(tmp_path):
    student = SiameseCAM(NetworkConfig())
    meta = json.loads(_card(student.config, "cam-student").to_json())
    del meta["kind"]
    path = tmp_path / "old.safetensors"
    save_file({"student." + k: v for k, v in student.state_dict().items()}, str(path),
              metadata={"format": "kdmsi-geo", "kdmsi": json.dumps(meta)})
    loaded = load_checkpoint(path)
    assert loaded.card.kind == "cam-student" and isinstance(loaded.model, SiameseCAM)


def test_weights_of_the_other_kind_are_refused(tmp_path):
    student = SiameseCAM(NetworkConfig())
    path = save_checkpoint(tmp_path / "m.safetensors", student,
                           _card(student.config, "cam-student"))
    meta = json.loads(read_card(path).to_json())
    meta["kind"] = "segmenter"
    save_file({"segmenter." + k: v for k, v in student.state_dict().items()}, str(path),
              metadata={"format": "kdmsi-geo", "kdmsi": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not fit the network"):
        load_checkpoint(path)


def test_unknown_kind_is_refused_in_one_sentence(tmp_path, pair):
    student = SiameseCAM(NetworkConfig())
    meta = json.loads(_card(student.config, "cam-student").to_json())
    meta["kind"] = "transformer"
    path = tmp_path / "future.safetensors"
    save_file({"student." + k: v for k, v in student.state_dict().items()}, str(path),
              metadata={"format": "kdmsi-geo", "kdmsi": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="kind 'transformer'"):
        load_checkpoint(path)
    t1, t2 = pair
    out = tmp_path / "changes.gpkg"
    result = CliRunner().invoke(cli, ["detect", str(t1), str(t2), "-o", str(out),
                                      "--model", str(path), "--progress", "none"])
    assert result.exit_code == 3
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ") and "kind 'transformer'" in message
    assert message.count(". ") == 0 and "Traceback" not in result.output
    assert not out.exists()


def test_detect_runs_a_segmenter_like_a_cam_student(tmp_path, pair):
    """Same pipeline: tiles, multiscale + flip averaging, stitch, COG and GeoPackage; with
    one tile covering the pair, the probability raster is the network's own multiscale map."""
    torch.manual_seed(3)
    seg = SiameseSegmenter(NetworkConfig(combination="abs")).eval()
    card = _card(seg.config, "segmenter")
    card.scales, card.threshold = (0.75, 1.0, 1.25), 0.5
    model = save_checkpoint(tmp_path / "seg.safetensors", seg, card)
    t1, t2 = pair
    summary = detect(t1, t2, tmp_path / "changes.gpkg", model=model, tile_size=160, overlap=0,
                     device="cpu", mask=tmp_path / "mask.tif")
    with rasterio.open(t1) as a, rasterio.open(t2) as b, \
            rasterio.open(summary.probability) as p:
        x1, x2 = (card.normalization.apply(torch.from_numpy(r.read()[None].astype(np.float32)))
                  for r in (a, b))
        grid = (a.crs, a.transform, a.shape)
        assert (p.crs, p.transform, p.shape) == grid
        prob = p.read(1)
    with torch.inference_mode():
        expected = msi(seg, x1, x2, card.scales)[0, 0].numpy()
    assert np.abs(prob - expected).max() < 1e-3
    assert summary.scales == (0.75, 1.0, 1.25)
    with rasterio.open(tmp_path / "mask.tif") as m:
        assert (m.read(1).astype(bool) == (prob > 0.5)).mean() > 0.999
    assert pyogrio.read_info(summary.changes)["features"] == summary.polygons


@pytest.mark.slow
def test_dask_workers_run_a_segmenter_as_this_process_does(tmp_path, pair):
    torch.manual_seed(4)
    seg = SiameseSegmenter(NetworkConfig()).eval()
    model = save_checkpoint(tmp_path / "seg.safetensors", seg, _card(seg.config, "segmenter"))
    t1, t2 = pair
    maps = []
    for name, workers in (("local", None), ("dask", 1)):
        s = detect(t1, t2, tmp_path / f"{name}.gpkg", model=model, tile_size=64, overlap=32,
                   device="cpu", workers=workers)
        with rasterio.open(s.probability) as p:
            maps.append(p.read(1))
    assert np.abs(maps[0] - maps[1]).max() < 1e-5
    assert maps[0].std() > 0
