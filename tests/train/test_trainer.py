"""The training loop's label-free parts: AUC, validation, selection including the start,
balanced batches, the step schedule, the time budget, and the starting model."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdmsi_core.checkpoint import load_checkpoint, read_card
from kdmsi_core.cli.main import cli
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization
from kdmsi_train.datasets import PairStore, TileFolder
from kdmsi_train.fit import fit_tile_folder
from kdmsi_train.start import adapt_bands, resolve_start
from kdmsi_train.trainer import (
    BatchSampler,
    TrainConfig,
    auc,
    auc_standard_error,
    data_normalization,
    validate,
)
from tests.train.data.toy import retype, write_toy_tiles


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_tiles(tmp_path_factory.mktemp("toy") / "data", tiles=120, size=32, seed=5)


def test_auc_counts_ties_as_half():
    labels = np.array([1, 1, 0, 0], float)
    assert auc(np.array([0.3, 0.3, 0.3, 0.3]), labels) == 0.5
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    # one changed pair tied with one unchanged pair: 3 wins and 1 tie of 4 comparisons
    assert auc(np.array([0.9, 0.5, 0.5, 0.1]), labels) == pytest.approx(3.5 / 4)
    assert auc(np.array([0.2, 0.4]), np.array([1.0, 1.0])) == 0.5  # one class only


class Difference(torch.nn.Module):
    """A CAM map that is the mean absolute date difference: a real network, not a stub, whose
    peak is high exactly where the toy set's buildings appear or vanish."""

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        d = (t2 - t1).abs().mean(dim=1, keepdim=True)
        return torch.nn.functional.avg_pool2d(d, 4) * 8 - 4


def test_validate_ranks_changed_pairs_by_peak_probability(toy):
    store = PairStore(TileFolder.open(toy, "val"))
    norm = Normalization.for_dtype("uint8", 3)
    good = validate(Difference(), store, norm, 8, torch.device("cpu"))
    assert good > 0.8
    flat = SiameseCAM(NetworkConfig())
    torch.nn.init.zeros_(flat.classifier.weight)  # the same map for every pair
    assert validate(flat, store, norm, 8, torch.device("cpu")) == 0.5


def test_balanced_batches_hold_both_classes_and_cycle():
    labels = np.array([1] * 3 + [0] * 17, float)
    sampler = BatchSampler(labels, 8, True, np.random.default_rng(0))
    seen = set()
    for _ in range(5):
        idx = sampler()
        assert len(idx) == 8 and labels[idx].sum() == 4
        seen |= set(idx.tolist())
    assert seen == set(range(20))  # every tile of both classes comes round
    plain = BatchSampler(labels, 8, False, np.random.default_rng(0))
    assert len(plain()) == 8


def test_adapt_bands_keeps_rgb_and_starts_extra_bands_at_zero():
    torch.manual_seed(0)
    net = SiameseCAM(NetworkConfig()).eval()
    state = net.state_dict()
    four = adapt_bands(state, 4)["backbone.conv1.weight"]
    rgb = state["backbone.conv1.weight"]
    assert four.shape[1] == 4
    assert torch.equal(four[:, :3], rgb)
    assert not four[:, 3].any()
    one = adapt_bands(state, 1)["backbone.conv1.weight"]
    assert torch.allclose(one[:, 0], rgb.sum(dim=1))
    # The adapted network maps an RGB + NIR pair exactly as the original maps its RGB bands,
    # whatever the NIR band holds: a start kept by selection is the original model.
    adapted = SiameseCAM(NetworkConfig(in_channels=4)).eval()
    adapted.load_state_dict(adapt_bands(state, 4))
    a, b = torch.randn(2, 4, 64, 64), torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(adapted(a, b), net(a[:, :3], b[:, :3]), atol=1e-6)


def test_default_start_fits_the_embedded_model_or_falls_back_to_scratch():
    start = resolve_start("default", "resnet18n", "abs", "cat", (2, 2, 2, 1), 4, None)
    embedded = load_checkpoint(None, first_stage=True).model.state_dict()  # what it carries
    assert start.source == "default" and "4 bands" in start.note
    got = start.student.state_dict()
    assert torch.equal(got["classifier.weight"], embedded["classifier.weight"])
    other = resolve_start("default", "resnet18n", "abs", "abs", (2, 2, 2, 1), 3, None)
    assert other.source == "scratch" and "does not fit" in other.note


def _weights(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_the_starting_model_wins_when_training_only_makes_it_worse(toy, tmp_path):
    start = tmp_path / "start.safetensors"
    fit_tile_folder(toy, start, TrainConfig(init="scratch", steps=30, batch_size=8, lr=3e-3))
    before = _weights(load_checkpoint(start).model)
    # A rate this high wrecks the network at the first step: selection must keep the start.
    config = TrainConfig(init=str(start), steps=8, batch_size=8, lr=50.0, optimizer="sgd")
    fitted = fit_tile_folder(toy, tmp_path / "tuned.safetensors", config)
    assert fitted.card.training["best_step"] == 0
    history = fitted.card.training["history"]
    assert history[0]["step"] == 0 and history[0]["val_auc"] == max(
        h["val_auc"] for h in history)
    after = load_checkpoint(fitted.path).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert fitted.card.threshold == read_card(start).threshold  # returned as it came
    assert fitted.card.threshold_rule.startswith("kept from the starting model")


def test_steps_and_time_budget_bound_training(toy, tmp_path):
    fitted = fit_tile_folder(toy, tmp_path / "a.safetensors",
                             TrainConfig(init="scratch", steps=12, batch_size=8,
                                         early_stop=False))
    assert [h["step"] for h in fitted.card.training["history"]][-1] == 12
    budget = fit_tile_folder(toy, tmp_path / "b.safetensors",
                             TrainConfig(init="scratch", steps=10_000, batch_size=8,
                                         time_budget=0.001))
    assert budget.card.training["stopped"].startswith("time budget")
    assert budget.card.training["history"][-1]["step"] < 10_000


def test_training_never_opens_pixel_masks(toy, tmp_path):
    """Weak supervision: train, select and calibrate on a copy without label/."""
    blind = tmp_path / "blind"
    shutil.copytree(toy, blind, ignore=shutil.ignore_patterns("label"))
    fitted = fit_tile_folder(blind, tmp_path / "m.safetensors",
                             TrainConfig(steps=6, batch_size=8))
    assert not (blind / "label").exists()
    assert 0 < fitted.card.threshold < 1


def test_cli_train_defaults_and_help(toy, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "lowest validation loss" not in help_text
    assert "--time-budget" in help_text and "--init" in help_text
    words = " ".join(help_text.split())
    assert "--stages INTEGER RANGE 2: the KD-MSI student, then" in words
    assert "[default: 2; 1<=x<=2]" in words
    out = tmp_path / "m.safetensors"
    result = runner.invoke(cli, ["train", str(toy), "-o", str(out), "--steps", "4",
                                 "--batch-size", "8", "--progress", "none"])
    assert result.exit_code == 0, result.output
    assert read_card(out).kind == "segmenter"  # two stages by default
    training = read_card(tmp_path / "m.stages" / "stage1.safetensors").training
    assert training["start"].startswith("default")
    assert training["config"]["steps"] == 4


def test_auc_standard_error_shrinks_with_more_validation_pairs():
    # Hanley and McNeil's formula, worked by hand for A = 0.72, 279 changed, 617 unchanged
    assert auc_standard_error(0.72, 279, 617) == pytest.approx(0.0194, abs=2e-4)
    assert auc_standard_error(0.72, 28, 62) > 3 * auc_standard_error(0.72, 279, 617)
    assert auc_standard_error(1.0, 50, 50) == 0.0


def test_training_scales_16_bit_tiles_as_its_start_meets_them(toy, tmp_path):
    """8-bit tiles leave their percentiles on the card; a 16-bit copy of them, trained from
    that start, is scaled exactly back onto the 8-bit values the start learnt from and keeps
    the reference, where from scratch its percentiles go to 0 and 1."""
    eight = data_normalization(PairStore(TileFolder.open(toy, "train")))
    assert eight.low == (0.0,) * 3 and eight.high == (255.0,) * 3
    assert eight.reference is not None and all(0 < v < 1 for v in eight.reference[0])
    copy = tmp_path / "u16"
    shutil.copytree(toy, copy)
    retype(copy, "uint16", 16.0, 100.0)
    store = PairStore(TileFolder.open(copy, "train"))
    matched = data_normalization(store, start=eight)
    assert np.allclose(matched.low, 100.0) and np.allclose(matched.high, 100.0 + 16 * 255)
    assert matched.reference == eight.reference
    plain = data_normalization(store)
    assert plain.reference is None
    assert all(p > m for p, m in zip(plain.low, matched.low, strict=True))
    four = data_normalization(store, start=replace(eight, reference=(
        eight.reference[0][:2], eight.reference[1][:2])))  # a start with fewer bands
    assert four.reference[0][2] == 0.0 and four.reference[1][2] == 1.0
    assert np.isclose(four.low[2], plain.low[2])
