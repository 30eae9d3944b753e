"""The embedded model's recipe: its fine-tuning rounds continue a trained segmenter."""

from dataclasses import replace

import pytest
import torch

from kdmsi_core.checkpoint import (
    SEGMENTER,
    ModelCard,
    default_model_path,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from kdmsi_core.errors import CheckpointError, ParameterError
from kdmsi_core.model import NetworkConfig
from kdmsi_core.normalize import Normalization
from kdmsi_core.segmenter import SiameseSegmenter
from kdmsi_train import recipe

SMALL = {"seed": 31, "scenes": 10, "scene_size": 256, "tile_size": 64,
         "label_min_fraction": 0.01}
FRESH = {"seed": 32, "scenes": 4, "scene_size": 128, "tile_size": 64}


def test_fine_tuning_rounds_continue_the_start_and_carry_its_first_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "STAGE2", replace(recipe.STAGE2, epochs=1, batch_size=8,
                                                  device="cpu"))
    start = default_model_path()
    done = read_card(start).training["rounds"]
    out = tmp_path / "model.safetensors"
    figures = recipe.run(out, tmp_path / "work", SMALL, recipe.CONFIG, FRESH, start=start,
                         finetune_rounds=1, final_epochs=0)
    assert [r["round"] for r in figures["stage2"]] == [done + 1]
    card = read_card(out)
    assert (card.training["round"], card.training["rounds"]) == (done + 1, done + 1)
    # fine-tuned from the start, not a new segmenter: the start's share of flagged pixels
    assert card.training["config"]["start"] == "the previous round's segmenter"
    assert card.training["start_flagged_share"] > 0
    assert "as the starting segmenter flags there" in card.threshold_rule
    assert "stage1_model" not in card.training  # no path of the work folder
    tuned, before = load_checkpoint(out).model.state_dict(), load_checkpoint(start).model
    assert not torch.equal(tuned["classifier.weight"], before.state_dict()["classifier.weight"])
    first, theirs = (load_checkpoint(p, first_stage=True).model.state_dict()
                     for p in (out, start))
    assert all(torch.equal(v, theirs[k]) for k, v in first.items())  # the same first stage
    assert read_card(out, first_stage=True).threshold == pytest.approx(
        read_card(start, first_stage=True).threshold)


def test_a_start_without_its_first_stage_is_refused_before_any_work(tmp_path):
    config = NetworkConfig(combination="minus")
    bare = save_checkpoint(tmp_path / "bare.safetensors", SiameseSegmenter(config), ModelCard(
        config, Normalization.for_dtype("uint8", 3), 64, 0.3, kind=SEGMENTER))
    with pytest.raises(CheckpointError, match="carries no first stage"):
        recipe.run(tmp_path / "out.safetensors", tmp_path / "work", SMALL, recipe.CONFIG,
                   FRESH, start=bare)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "work").exists()


def test_the_last_round_is_a_new_segmenter_matched_to_its_labeller(tmp_path, monkeypatch):
    """After the fine-tuning rounds: a new segmenter from the first stage's encoder, on the
    last segmenter's pseudo labels, flagging the share of validation pixels that one flags."""
    monkeypatch.setattr(recipe, "STAGE2", replace(recipe.STAGE2, batch_size=8, device="cpu"))
    start = default_model_path()
    done = read_card(start).training["rounds"]
    out = tmp_path / "model.safetensors"
    figures = recipe.run(out, tmp_path / "work", SMALL, recipe.CONFIG, FRESH, start=start,
                         finetune_rounds=0, final_epochs=1)
    assert [r["round"] for r in figures["stage2"]] == [done + 1]
    card = read_card(out)
    config = card.training["config"]
    assert config["epochs"] == 1 and config["start"] is None  # new, not fine-tuned
    assert config["match"] == card.training["pseudo_labels"]["model"] == \
        "the previous round's segmenter"  # no path of the work folder
    assert card.training["start_flagged_share"] > 0
    assert "as the model that wrote its pseudo labels flags there" in card.threshold_rule
    new, theirs = (load_checkpoint(p).model.state_dict() for p in (out, start))
    assert not torch.equal(new["classifier.weight"], theirs["classifier.weight"])
    with pytest.raises(ParameterError, match="no more are asked for"):
        recipe.run(tmp_path / "none.safetensors", tmp_path / "work2", SMALL, recipe.CONFIG,
                   FRESH, start=start, finetune_rounds=0, final_epochs=0)
    assert not (tmp_path / "work2").exists()
