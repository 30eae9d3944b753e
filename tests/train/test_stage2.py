"""The second stage: masked loss and augmentation, and `train --stages 2` end to end, on a
tile folder without label/ (so no pixel mask can reach training) and in the GIS form,
resuming from kept intermediate results."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdmsi_core.checkpoint import (
    ModelCard,
    default_model_path,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from kdmsi_core.cli.main import cli
from kdmsi_core.errors import CheckpointError, OutputError
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization, for_data
from kdmsi_core.refine import refine
from kdmsi_core.segmenter import SiameseSegmenter
from kdmsi_train import stage2, threshold
from kdmsi_train.datasets import PairStore, TileFolder, sample_values
from kdmsi_train.predict import change_maps, iter_batches
from kdmsi_train.pseudo import IGNORE, write_pseudo_labels
from kdmsi_train.stage2 import (
    IMAGE_WEIGHT,
    MAX_EPOCHS,
    STAGE2_SCALES,
    START_WEIGHT,
    UNCHANGED_SQUARE,
    UNSURE_WEIGHT,
    MaskedStore,
    Stage2Config,
    augment,
    beats_last,
    build_segmenter,
    fit_segmenter,
    histograms,
    image_bce,
    masked_bce,
    mosaic,
    mosaic_factor,
    prior_share,
    start_at_prior,
    tile_logits,
    train_segmenter,
)
from kdmsi_train.stages import ROUNDS, segmenter_start, stage2_config
from kdmsi_train.start import resolve_start
from kdmsi_train.trainer import DEFAULT_PIXELS, TrainConfig, auc_standard_error
from tests.train.data.toy import write_toy_tiles
from tests.train.test_areas import _gpkg, _tif, _world

FAST = ["--epochs", "1", "--stage2-epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--progress", "none"]


def test_default_epochs_follow_the_first_stage_pixel_budget_up_to_the_cap():
    config = Stage2Config()
    assert config.total_epochs(424, 256) == MAX_EPOCHS == 5
    assert config.total_epochs(448, 128) == MAX_EPOCHS
    assert config.total_epochs(20000, 256) == 1
    assert config.total_epochs(4000, 128) == 2
    for tiles, size in ((424, 256), (448, 128), (3968, 64), (4000, 128), (20000, 256)):
        epochs = config.total_epochs(tiles, size)
        assert 1 <= epochs <= MAX_EPOCHS
        if 1 < epochs < MAX_EPOCHS:  # within half a pass of the budget
            assert abs(epochs * tiles * size ** 2 - DEFAULT_PIXELS) <= tiles * size ** 2 / 2
    assert Stage2Config(epochs=3).total_epochs(424, 256) == 3


def test_a_trained_start_is_fine_tuned_on_a_third_of_the_pixels():
    config = Stage2Config()
    assert config.total_epochs(424, 256, trained=True) == 2
    assert config.total_epochs(3968, 64, trained=True) == 3
    assert config.total_epochs(156, 256, trained=True) == MAX_EPOCHS
    assert config.total_epochs(20000, 256, trained=True) == 1
    for tiles, size in ((424, 256), (3968, 64), (156, 256), (1696, 128), (20000, 256)):
        assert config.total_epochs(tiles, size, trained=True) <= config.total_epochs(tiles, size)
    assert Stage2Config(epochs=4).total_epochs(424, 256, trained=True) == 4


def test_unsure_pixels_pull_lightly_towards_background():
    logits = torch.tensor([[[[0.0, 0.0], [2.0, 2.0]]]], requires_grad=True)
    masks = torch.tensor([[[1, 0], [IGNORE, IGNORE]]], dtype=torch.uint8)
    loss = masked_bce(logits, masks, 0.2)
    loss.backward()
    unsure = np.log1p(np.exp(2.0))  # BCE of logit 2 against background
    assert loss.item() == pytest.approx((2 * np.log(2) + 2 * 0.2 * unsure) / 2.4)
    assert (logits.grad[0, 0, 1] > 0).all()  # pushed down, towards background
    # weight 0: the unsure pixels give no loss and no gradient
    logits.grad = None
    loss = masked_bce(logits, masks, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx(np.log(2))
    assert logits.grad[0, 0, 1].abs().sum() == 0 and logits.grad[0, 0, 0].abs().min() > 0
    assert masked_bce(logits, torch.full_like(masks, IGNORE), 0.0).item() == 0
    assert masked_bce(logits, masks).item() == pytest.approx(
        masked_bce(logits, masks, UNSURE_WEIGHT).item())


def test_augmentation_keeps_masks_on_their_pixels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, (16, 3, 8, 8)).astype(np.uint8)
    b = a.copy()
    m = np.zeros((16, 8, 8), np.uint8)
    m[:, 1:3, 2:7] = 1
    b[:, :, 1:3, 2:7] = 255
    for x, y, z in zip(*augment(a, b, m, rng), strict=True):
        assert ((x != y).any(axis=0) == (z == 1)).all()


def test_small_tiles_are_trained_in_mosaics_that_keep_each_tile_with_its_labels():
    assert [mosaic_factor(t, 256, 16) for t in (64, 128, 256, 512)] == [4, 2, 1, 1]
    assert mosaic_factor(64, 256, 8) == 2  # at least one mosaic per batch
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (8, 3, 16, 24), dtype=np.uint8)
    b, m = a // 2, rng.integers(0, 2, (8, 16, 24), dtype=np.uint8)
    x, y, z = mosaic(a, b, m, 2)
    assert x.shape == (2, 3, 32, 48) and z.shape == (2, 32, 48)
    for i in range(8):  # tile i of mosaic i // 4, at row (i % 4) // 2 and column i % 2
        rows, cols = slice(16 * (i % 4 // 2), 16 * (i % 4 // 2 + 1)), slice(
            24 * (i % 2), 24 * (i % 2 + 1))
        assert np.array_equal(x[i // 4][:, rows, cols], a[i])
        assert np.array_equal(y[i // 4][:, rows, cols], b[i])
        assert np.array_equal(z[i // 4][rows, cols], m[i])
    assert mosaic(a, b, m, 1)[0] is a


def test_tile_logits_take_mosaics_apart_in_the_order_of_the_tiles():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (8, 3, 16, 24), dtype=np.uint8)
    m = rng.integers(0, 2, (8, 16, 24), dtype=np.uint8)
    z = mosaic(a, a, m, 2)[2]
    assert np.array_equal(tile_logits(torch.from_numpy(z[:, None].astype(np.float32)), 2), m)
    one = torch.randn(3, 1, 8, 8)
    assert torch.equal(tile_logits(one, 1), one[:, 0])


def test_the_image_term_moves_only_each_pairs_most_change_like_cell():
    logits = torch.full((2, 8, 8), -3.0)
    logits[:, 4:8, 0:4] = 1.0  # the peak 4x4 cell of both pairs
    logits.requires_grad_(True)
    loss = image_bce(logits, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(
        (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(1.0))) / 2, rel=1e-5)
    loss.backward()
    grad = logits.grad.clone()
    assert (grad[0, 4:8, 0:4] < 0).all()  # changed pair: its peak is raised
    assert (grad[1, 4:8, 0:4] > 0).all()  # unchanged pair: its peak is lowered
    grad[:, 4:8, 0:4] = 0
    assert not grad.any()


def test_segmenter_starts_at_the_share_of_change():
    torch.manual_seed(0)
    net = SiameseSegmenter(NetworkConfig()).eval()
    share = start_at_prior(net, {"background": 0.6, "change": 0.012, "ignore": 0.388})
    assert share == pytest.approx(0.012 / 0.612)
    with torch.inference_mode():
        p = torch.sigmoid(net(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)))
    assert p.mean().item() == pytest.approx(0.02, abs=0.015)


def test_an_earlier_epoch_replaces_the_last_only_by_more_than_its_standard_error():
    few = np.array([1] * 17 + [0] * 15)  # small-256-nir's validation pairs
    many = np.array([1] * 279 + [0] * 617)  # many-64's
    se_few = auc_standard_error(0.80, 17, 15)
    assert 0.05 < se_few < 0.1
    assert not beats_last(0.80 + se_few * 0.9, 0.80, few)  # chance on 32 pairs
    assert beats_last(0.80 + se_few * 1.1, 0.80, few)
    assert beats_last(0.86, 0.80, many)  # the same gain is real on 896 pairs
    assert not beats_last(0.79, 0.80, many)


@pytest.fixture(scope="module")
def no_masks(tmp_path_factory):
    root = write_toy_tiles(tmp_path_factory.mktemp("stage2") / "data", tiles=64, size=64,
                           seed=5)
    (root / "label").rename(root.parent / "masks")  # out of reach until evaluation
    return root


def test_the_second_stage_starts_from_the_segmenter_its_first_stage_came_in(tmp_path):
    embedded = "default"  # the embedded model, named so in the card, not by its path
    assert stage2_config(TrainConfig()).start == embedded  # --init default
    assert stage2_config(TrainConfig(init="scratch")).start is None
    assert stage2_config(TrainConfig(pretrained="resnet18.pth")).start is None
    cam = tmp_path / "cam.safetensors"  # a first-stage model comes with no segmenter
    save_checkpoint(cam, SiameseCAM(NetworkConfig()), ModelCard(
        NetworkConfig(), Normalization.for_dtype("uint8", 3), 64, 0.2))
    assert stage2_config(TrainConfig(init=str(cam))).start is None
    weights = load_checkpoint(None).model.state_dict()
    network, trained = build_segmenter(Stage2Config(start=embedded), 4)  # RGB + NIR data
    got = network.state_dict()
    assert trained and torch.equal(got["classifier.bias"], weights["classifier.bias"])
    first = got["backbone.conv1.weight"]
    assert torch.equal(first[:, :3], weights["backbone.conv1.weight"])
    assert not first[:, 3].any()  # the extra band starts at zero weight
    other, trained = build_segmenter(Stage2Config(combination="abs", start=embedded), 3)
    assert not trained  # another fusion: a new segmenter


@pytest.fixture(scope="module")
def embedded_pseudo(no_masks, tmp_path_factory):
    """Pseudo labels of the toy set from the embedded model's maps (read only by the tests)."""
    pseudo = tmp_path_factory.mktemp("embedded") / "pseudo"
    write_pseudo_labels(no_masks, default_model_path(), pseudo, batch_size=8, device="cpu")
    return pseudo


def test_a_trained_start_is_kept_when_training_only_makes_it_worse(no_masks, embedded_pseudo):
    val = PairStore(TileFolder.open(no_masks, "val"))
    # A rate this high wrecks the network at the first step: selection must keep the start.
    config = Stage2Config(start=str(default_model_path()), epochs=2, batch_size=8, lr=50.0,
                          optimizer="sgd", device="cpu")
    fitted = train_segmenter(MaskedStore(embedded_pseudo), config, val)
    assert fitted.best_epoch == 0 and fitted.history[0]["epoch"] == 0
    weights = load_checkpoint(None).model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in fitted.network.state_dict().items())


def test_a_fine_tuned_segmenter_flags_as_much_as_its_start(no_masks, embedded_pseudo,
                                                              tmp_path):
    """Its threshold flags the share of validation pixels that the start flags at its own;
    a start that no epoch beats comes back with its own threshold."""
    val = PairStore(TileFolder.open(no_masks, "val"))
    start = load_checkpoint(None)

    def flagged(model, t):
        norm = for_data(model.card.normalization, sample_values(val))
        h = histograms(model.model, val, norm, torch.device("cpu"), model.card.scales, 8)
        return threshold.share_above(h.changed + h.unchanged, t)

    def refined_flagged(model, t):
        norm = for_data(model.card.normalization, sample_values(val))
        above = total = 0
        with torch.inference_mode():
            for _, t1, t2 in iter_batches(val, norm, torch.device("cpu"), 8):
                maps = refine(change_maps(model.model.eval(), t1, t2, "msi",
                                          model.card.scales)[:, None], t1, t2,
                              model.card.refine)
                above, total = above + int((maps >= t).sum()), total + maps.numel()
        return above / total

    share = flagged(start, start.card.threshold)
    assert 0 < share < 0.5
    tuned = Stage2Config(start="default", epochs=1, batch_size=8, lr=1e-2, device="cpu")
    fitted = fit_segmenter(embedded_pseudo, val, tmp_path / "tuned.safetensors", tuned)
    assert fitted.best_epoch == 1 and fitted.card.threshold != start.card.threshold
    assert fitted.card.training["start_flagged_share"] == pytest.approx(share)
    assert flagged(load_checkpoint(fitted.path), fitted.card.threshold) == pytest.approx(
        share, abs=2e-3)
    assert "as the starting segmenter flags there" in fitted.card.threshold_rule
    assert 0 < fitted.card.training["threshold_image_rule"] < 1  # the rule's, for comparison
    # the refined maps get their own threshold, where they flag as many pixels as the raw
    # maps flag at the card's
    tuned_model = load_checkpoint(fitted.path)
    refined_t = fitted.card.refine.threshold
    assert refined_t is not None and refined_t != fitted.card.threshold
    assert refined_flagged(tuned_model, refined_t) == pytest.approx(
        flagged(tuned_model, fitted.card.threshold), abs=2e-3)
    assert refined_flagged(tuned_model, fitted.card.threshold) != pytest.approx(
        flagged(tuned_model, fitted.card.threshold), abs=2e-3)
    wrecked = Stage2Config(start="default", epochs=1, batch_size=8, lr=50.0, optimizer="sgd",
                           device="cpu")
    kept = fit_segmenter(embedded_pseudo, val, tmp_path / "kept.safetensors", wrecked)
    assert kept.best_epoch == 0
    assert kept.card.threshold == pytest.approx(start.card.threshold, abs=1e-3)
    new = fit_segmenter(embedded_pseudo, val, tmp_path / "new.safetensors",
                        Stage2Config(epochs=1, batch_size=8, device="cpu"))
    assert new.card.training["start_flagged_share"] is None  # no trained start: the rule
    assert new.card.threshold == pytest.approx(new.card.training["threshold_image_rule"], abs=1e-4)
    assert f"{UNCHANGED_SQUARE}-px squares of the pairs labelled unchanged" in \
        new.card.threshold_rule


def test_a_new_segmenter_can_flag_as_much_as_the_model_that_labelled_it(
        no_masks, embedded_pseudo, tmp_path):
    """The recipe's last round: a new segmenter (no trained start) thresholded at the share
    of validation pixels that its labeller flags at its own threshold; a model made for
    other bands is refused before any training."""
    val = PairStore(TileFolder.open(no_masks, "val"))
    labeller = load_checkpoint(None)
    norm = for_data(labeller.card.normalization, sample_values(val))
    h = histograms(labeller.model, val, norm, torch.device("cpu"), labeller.card.scales, 8)
    share = threshold.share_above(h.changed + h.unchanged, labeller.card.threshold)
    config = Stage2Config(epochs=1, batch_size=8, device="cpu", match=str(default_model_path()))
    new = fit_segmenter(embedded_pseudo, val, tmp_path / "new.safetensors", config)
    assert new.start is None and new.card.training["config"]["start"] is None
    assert new.card.training["start_flagged_share"] == pytest.approx(share)
    assert new.card.threshold != pytest.approx(new.card.training["threshold_image_rule"])
    assert "as the model that wrote its pseudo labels flags there" in new.card.threshold_rule
    mine = histograms(new.network, val, new.normalization, torch.device("cpu"),
                      new.card.scales, 8)
    floor = prior_share(MaskedStore(embedded_pseudo).summary["fractions"])
    assert new.card.threshold == pytest.approx(
        threshold.matching(mine.changed + mine.unchanged, share, floor), abs=1e-6)
    four = NetworkConfig(combination="minus", in_channels=4)
    other = save_checkpoint(tmp_path / "four.safetensors", SiameseSegmenter(four), ModelCard(
        four, Normalization.for_dtype("uint8", 4), 64, 0.3, kind="segmenter",
        band_names=("band1", "band2", "band3", "band4")))
    with pytest.raises(CheckpointError, match="takes 4 bands but the data have 3"):
        fit_segmenter(embedded_pseudo, val, tmp_path / "never.safetensors",
                      replace(config, match=str(other), epochs=50))
    assert not (tmp_path / "never.safetensors").exists()


def test_fine_tuning_returns_the_average_of_the_start_and_the_tuned_weights(
        no_masks, embedded_pseudo):
    store, val = MaskedStore(embedded_pseudo), PairStore(TileFolder.open(no_masks, "val"))
    config = Stage2Config(start="default", epochs=1, batch_size=8, lr=1e-2, device="cpu")
    tuned = train_segmenter(store, replace(config, start_weight=0.0), val)
    half = train_segmenter(store, config, val)
    assert config.start_weight == START_WEIGHT == 0.5 and half.best_epoch == tuned.best_epoch == 1
    start = load_checkpoint(None).model.state_dict()
    mine, theirs = half.network.state_dict(), tuned.network.state_dict()
    assert not torch.allclose(theirs["classifier.weight"], start["classifier.weight"])
    for name, value in mine.items():  # weights and BatchNorm statistics alike
        if value.is_floating_point():
            assert torch.allclose(value, (theirs[name] + start[name]) / 2, atol=1e-6), name
        else:
            assert torch.equal(value, theirs[name])


def test_a_trained_start_trains_on_the_trained_budget(no_masks, embedded_pseudo, monkeypatch):
    store = MaskedStore(embedded_pseudo)
    pixels = len(store) * store.pairs.shape[1] ** 2
    assert Stage2Config().total_epochs(len(store), store.pairs.shape[1]) == MAX_EPOCHS
    monkeypatch.setattr(stage2, "TRAINED_PIXELS", pixels)  # one pass for a trained start
    config = Stage2Config(start="default", batch_size=8, device="cpu")
    fitted = train_segmenter(store, config, PairStore(TileFolder.open(no_masks, "val")))
    assert [h["epoch"] for h in fitted.history] == [0, 1]


def test_the_image_term_sees_each_trained_tile_with_its_image_label(
        no_masks, embedded_pseudo, monkeypatch):
    store = MaskedStore(embedded_pseudo)
    seen = []

    def spy(logits, labels):
        seen.append((logits.shape, labels.tolist()))
        return image_bce(logits, labels)

    monkeypatch.setattr(stage2, "image_bce", spy)
    config = Stage2Config(start="default", epochs=1, batch_size=8, device="cpu",
                          image_weight=0.1, augment=False)
    train_segmenter(store, config)
    size = store.pairs.shape[1]
    assert len(seen) == len(store) // 8
    assert all(shape == (8, size, size) for shape, _ in seen)
    labels = [y for _, batch in seen for y in batch]
    truth = store.pairs.labels.tolist()
    assert len(labels) == len(store) // 8 * 8  # each step's tiles, each with its label
    assert labels.count(1.0) <= truth.count(1.0) and labels.count(0.0) <= truth.count(0.0)
    assert 0 < sum(labels) < len(labels)


@pytest.mark.slow
def test_train_stages_2_end_to_end_and_resume(no_masks, tmp_path):
    out = tmp_path / "m.safetensors"
    args = ["train", str(no_masks), "-o", str(out), "--stages", "2", *FAST]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.kind == "segmenter" and card.tile_size == 64
    assert card.training["pseudo_labels"]["t_high"] >= card.training["pseudo_labels"]["t_low"]
    assert 0 < card.threshold < 1 and card.scales == STAGE2_SCALES
    # clipped below at the pseudo labels' share of change, not at the first stage's floor
    assert card.threshold >= prior_share(card.training["pseudo_labels"]["fractions"])
    assert "share of change among the labelled pseudo-label pixels" in card.threshold_rule
    # from the embedded segmenter (--init default): the start's share of flagged pixels
    assert "as the starting segmenter flags there" in card.threshold_rule
    assert card.training["start_flagged_share"] > 0
    assert card.training["config"]["unsure_weight"] == UNSURE_WEIGHT  # the loss is recorded
    assert card.training["config"]["image_weight"] == IMAGE_WEIGHT > 0
    assert isinstance(load_checkpoint(out).model, SiameseSegmenter)
    work = tmp_path / "m.stages"
    stage1, pseudo = work / "stage1.safetensors", work / "pseudo" / "pseudo.json"
    assert read_card(stage1).kind == "cam-student"
    load_checkpoint(stage1, teacher=True)  # kept with its teacher
    assert len(list((work / "pseudo" / "pseudo").iterdir())) == len(
        (no_masks / "list" / "train.txt").read_text().split())
    # the second round learnt the pseudo labels of the first round's segmenter
    first, pseudo2 = work / "segmenter1.safetensors", work / "pseudo2" / "pseudo.json"
    assert ROUNDS == 2 and card.training["round"] == card.training["rounds"] == 2
    assert read_card(first).kind == "segmenter" and read_card(first).training["round"] == 1
    assert card.training["pseudo_labels"]["model"] == str(first)
    assert card.training["pseudo_labels"]["model_kind"] == "segmenter"
    assert read_card(first).training["pseudo_labels"]["model"] == str(stage1)
    assert card.training["stage1_model"] == str(stage1)

    out.unlink()  # as if the last round had been interrupted
    steps = (stage1, pseudo, first, pseudo2)
    before = [p.stat().st_mtime_ns for p in steps]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in steps] == before  # reused
    assert out.is_file()
    one = tmp_path / "one.safetensors"  # --rounds 1: the first round's segmenter is the model
    result = CliRunner().invoke(cli, ["train", str(no_masks), "-o", str(one), "--stages", "2",
                                      "--rounds", "1", *FAST])
    assert result.exit_code == 0, result.output
    assert read_card(one).training["rounds"] == 1
    assert not (tmp_path / "one.stages" / "segmenter1.safetensors").exists()

    out.unlink()
    other = CliRunner().invoke(cli, [*args, "--seed", "1"])
    assert other.exit_code == OutputError.exit_code
    assert "other settings" in other.output and not out.exists()
    assert [p.stat().st_mtime_ns for p in steps] == before  # nothing lost
    # --overwrite starts afresh, after another run's leftovers as after a finished run
    afresh = CliRunner().invoke(cli, [*args, "--seed", "1", "--overwrite"])
    assert afresh.exit_code == 0, afresh.output
    assert read_card(out).training["config"]["seed"] == 1
    assert read_card(stage1).training["config"]["seed"] == 1

    # the output carries its first stage, as the embedded model does, so it can start
    # further training (--init out) and be evaluated beside that stage without the work folder
    assert read_card(out, first_stage=True) == read_card(stage1)
    assert segmenter_start(TrainConfig(init=str(out))) == str(out)
    start = resolve_start(str(out), "resnet18n", "abs", "cat", (2, 2, 2, 1), 3, None)
    carried_teacher = load_checkpoint(stage1, teacher=True).model.state_dict()
    assert all(torch.equal(v, carried_teacher[k]) for k, v in start.teacher.state_dict().items())

    def methods_of(model):
        result = CliRunner().invoke(cli, ["evaluate", str(no_masks), "--model", str(model),
                                          "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output[result.output.index("{"):])["methods"]

    shutil.copytree(no_masks.parent / "masks", no_masks / "label")
    # a segmenter written before they carried it: the first stage its card names
    legacy = save_checkpoint(tmp_path / "legacy.safetensors", load_checkpoint(out).model,
                             read_card(out))
    try:
        methods = methods_of(out)
        named = methods_of(legacy)
        shutil.rmtree(work)
        from_file = methods_of(out)  # no intermediate results left: the carried one
    finally:
        shutil.rmtree(no_masks / "label")
    # both stages side by side, and the segmenter's refined maps beside its raw ones
    assert set(methods) == {"msi", "msi_raw", "single", "stage1_msi"}
    assert read_card(out).refine is not None and methods["msi"] != methods["msi_raw"]
    assert methods["stage1_msi"]["threshold"] == read_card(out, first_stage=True).threshold
    assert {"boundary_f1", "objects_hit", "objects_missed", "objects_false"} <= set(
        methods["msi"])
    assert from_file == methods  # the carried first stage, with or without the work folder
    # the carried first stage runs in PyTorch, the named one in ONNX Runtime: near-equal
    assert named["msi"] == methods["msi"]
    assert named["stage1_msi"]["f1"] == pytest.approx(methods["stage1_msi"]["f1"], abs=0.01)


@pytest.mark.slow
def test_train_stages_2_in_the_gis_form(tmp_path):
    rng = np.random.default_rng(0)
    t1 = (rng.normal(110, 12, (3, 320, 320))).clip(0, 255).astype(np.uint8)
    t2 = (t1 * 0.95 + rng.normal(0, 4, t1.shape)).clip(0, 255).astype(np.uint8)
    blocks = [(40, 40), (40, 230), (230, 40)]
    for col, row in blocks:
        t2[:, row:row + 20, col:col + 24] = 230
    _tif(tmp_path / "t1.tif", t1)
    _tif(tmp_path / "t2.tif", t2)
    _gpkg(tmp_path / "areas.gpkg", [_world(c - 4, r - 4, 32) for c, r in blocks]
          + [_world(150, 150, 160)], [1, 1, 1, 0])
    out = tmp_path / "gis.safetensors"
    result = CliRunner().invoke(cli, [
        "train", "--t1", str(tmp_path / "t1.tif"), "--t2", str(tmp_path / "t2.tif"),
        "--labels", str(tmp_path / "areas.gpkg"), "--tile-size", "64", "--samples", "24",
        "-o", str(out), "--stages", "2", *FAST])
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.kind == "segmenter" and card.training["t1"].endswith("t1.tif")
    assert (tmp_path / "gis.stages" / "tiles" / "list" / "train_label.txt").is_file()
