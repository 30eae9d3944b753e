import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdmsi_core.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from kdmsi_core.errors import CheckpointError
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization


def _card(network: NetworkConfig, **kw) -> ModelCard:
    return ModelCard(network, Normalization.for_dtype("uint8", network.in_channels), 128, 0.42,
                     teacher_combination="abs", **kw)


def _save(path, combination="cat", teacher=True):
    torch.manual_seed(0)
    student = SiameseCAM(NetworkConfig(combination=combination))
    t = SiameseCAM(NetworkConfig(combination="abs")) if teacher else None
    save_checkpoint(path, student, _card(student.config), t)
    return student, t


def test_roundtrip_reproduces_outputs_and_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    student, teacher = _save(path)
    loaded = load_checkpoint(path)
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(student.eval()(x1, x2), loaded.model(x1, x2))
        t = load_checkpoint(path, teacher=True)
        assert torch.equal(teacher.eval()(x1, x2), t.model(x1, x2))
    assert t.model.config.combination == "abs"
    card = read_card(path)
    assert card.threshold == pytest.approx(0.42) and card.tile_size == 128
    assert card.network == NetworkConfig(combination="cat")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["kdmsi"])
    assert meta["format_version"] == 1 and meta["bands"]["count"] == 3
    assert list(tmp_path.iterdir()) == [path]
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, like any new file


def test_config_that_does_not_fit_the_weights_is_refused(tmp_path):
    """The official code silently ran an `abs` checkpoint as `minus`; here it is refused."""
    path = tmp_path / "m.safetensors"
    student = SiameseCAM(NetworkConfig(combination="cat"))
    wrong = _card(NetworkConfig(combination="minus"))
    save_checkpoint(path, student, wrong)
    with pytest.raises(CheckpointError, match="do not fit the network"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a kdmsi-geo checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a kdmsi-geo checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_missing_teacher_and_future_version(tmp_path):
    path = tmp_path / "m.safetensors"
    _save(path, teacher=False)
    with pytest.raises(CheckpointError, match="no teacher"):
        load_checkpoint(path, teacher=True)
    student = SiameseCAM(NetworkConfig())
    meta = json.loads(_card(student.config).to_json())
    meta["format_version"] = 99
    save_file({"student." + k: v for k, v in student.state_dict().items()}, str(path),
              metadata={"format": "kdmsi-geo", "kdmsi": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
