import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdmsi_core.checkpoint import (
    ModelCard,
    card_problem,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
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


def _segmenter_card(network: NetworkConfig) -> ModelCard:
    return ModelCard(network, Normalization.for_dtype("uint8", network.in_channels), 64, 0.3,
                     kind="segmenter")


def test_segmenter_carries_its_first_stage_in_float16(tmp_path):
    """The embedded model's layout: a segmenter with the student and teacher it came from,
    stored in float16 (half the bytes) and widened to float32 when loaded."""
    from kdmsi_core.checkpoint import has_first_stage
    from kdmsi_core.segmenter import SiameseSegmenter

    stage1 = tmp_path / "stage1.safetensors"
    student, teacher = _save(stage1)
    torch.manual_seed(1)
    seg = SiameseSegmenter(NetworkConfig(combination="minus")).eval()
    full = save_checkpoint(tmp_path / "full.safetensors", seg, _segmenter_card(seg.config),
                           first_stage=stage1)
    half = save_checkpoint(tmp_path / "half.safetensors", seg, _segmenter_card(seg.config),
                           first_stage=stage1, half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    with safe_open(str(half), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16, torch.int64}  # noqa: SIM118
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(seg(x1, x2), load_checkpoint(full).model(x1, x2))
        loaded = load_checkpoint(half)
        assert next(loaded.model.parameters()).dtype == torch.float32
        assert torch.allclose(seg(x1, x2), loaded.model(x1, x2), atol=2e-2)
        first = load_checkpoint(full, first_stage=True)
        assert first.card == read_card(stage1) == read_card(half, first_stage=True)
        assert torch.equal(student.eval()(x1, x2), first.model(x1, x2))
        carried_teacher = load_checkpoint(full, teacher=True, first_stage=True).model
        assert torch.equal(teacher.eval()(x1, x2), carried_teacher(x1, x2))
    assert read_card(half).kind == "segmenter"
    assert has_first_stage(half) and not has_first_stage(stage1)
    with pytest.raises(CheckpointError, match="carries no first-stage model"):
        load_checkpoint(stage1, first_stage=True)


def test_start_from_a_segmenter_uses_its_first_stage(tmp_path):
    from kdmsi_core.segmenter import SiameseSegmenter
    from kdmsi_train.start import resolve_start

    stage1 = tmp_path / "stage1.safetensors"
    student, teacher = _save(stage1)
    seg = SiameseSegmenter(NetworkConfig(combination="minus"))
    with_first = save_checkpoint(tmp_path / "a.safetensors", seg, _segmenter_card(seg.config),
                                 first_stage=stage1)
    start = resolve_start(str(with_first), "resnet18n", "abs", "cat", (2, 2, 2, 1), 3, None)
    for got, want in ((start.student, student), (start.teacher, teacher)):
        assert all(torch.equal(v, want.state_dict()[k]) for k, v in got.state_dict().items())
    assert start.threshold == pytest.approx(0.42)  # the first stage's, not the segmenter's
    bare = save_checkpoint(tmp_path / "b.safetensors", seg, _segmenter_card(seg.config))
    with pytest.raises(CheckpointError, match="carries no first stage"):
        resolve_start(str(bare), "resnet18n", "abs", "cat", (2, 2, 2, 1), 3, None)


def test_normalisation_reference_is_kept_and_checked(tmp_path):
    """The training data's percentiles travel on the card; older cards have none, and one
    that does not fit the bands or leaves 0..1 is refused in one sentence."""
    student = SiameseCAM(NetworkConfig())
    card = _card(student.config)
    reference = ((0.1, 0.1, 0.05), (0.7, 0.75, 0.6))
    with_ref = replace(card, normalization=replace(card.normalization, reference=reference))
    save_checkpoint(tmp_path / "m.safetensors", student, with_ref)
    assert read_card(tmp_path / "m.safetensors").normalization.reference == reference
    assert ModelCard.from_json(card.to_json()).normalization.reference is None
    text = json.loads(with_ref.to_json())
    for low, high in (([0.1, 0.1], [0.7, 0.7]), ([0.1, 0.8, 0.1], [0.7, 0.7, 0.7]),
                      ([-0.1, 0.1, 0.1], [0.7, 0.7, 0.7]), ([0.1, 0.1, 0.1], [0.7, 1.5, 0.7])):
        text["normalization"]["reference"] = {"low": low, "high": high}
        assert "reference" in card_problem(ModelCard.from_json(json.dumps(text)))
