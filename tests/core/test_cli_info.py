"""``kdmsi-geo info``: the card that programs (the QGIS plugin) read instead of the file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kdmsi_core.checkpoint import ModelCard, default_model_path, read_card, save_checkpoint
from kdmsi_core.cli.main import cli
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization
from kdmsi_train.recipe import FINAL_EPOCHS, FINETUNE_ROUNDS, RECIPE_ROUNDS


def test_json_card_of_the_default_model() -> None:
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    card = read_card(default_model_path())
    assert record["path"] == str(default_model_path())
    assert record["threshold"] == card.threshold and record["tile_size"] == card.tile_size
    assert record["refine"]["threshold"] == card.refine.threshold < card.threshold
    assert record["bands"]["count"] == card.network.in_channels == 3
    # a segmenter's map is drawn on its decoder's stride-4 grid, not the encoder's 16
    assert record["kind"] == card.kind == "segmenter"
    assert record["output_stride"] == card.map_stride == 4 < card.network.output_stride
    assert record["first_stage"] == json.loads(
        read_card(default_model_path(), first_stage=True).to_json())
    assert record["first_stage"]["kind"] == "cam-student"
    assert record["training"]["best_epoch"] == card.training["best_epoch"]


def test_text_card_names_what_a_user_needs() -> None:
    result = CliRunner().invoke(cli, ["info", str(default_model_path())])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "Model", "Kind", "Bands", "Tile size", "Threshold", "Input scaling", "Pixel size",
        "Outline refinement", "Trained", "Carries its first stage"]
    assert lines[2].startswith("Bands: 3 (")
    card = read_card(default_model_path())
    assert lines[4] == (f"Threshold: {card.threshold:.3f}; {card.refine.threshold:.3f} on the "
                        "refined maps, which flag as many validation pixels there")
    # the recipe's 8-bit scenes: 2nd percentiles at 7-11 %, 98th at 61-76 % of 0..255
    assert lines[5].endswith("percentiles at 7%-11% and 61%-76% of the 8-bit range, where "
                             "its training data's fell")
    assert lines[6] == "Pixel size: 0.5 m, its training data's; finer imagery is read at it"
    assert lines[7] == ("Outline refinement: guided filter, both dates as guide, radius "
                        "12 px, eps 0.001 (pixels of 0.5 m: wider on finer imagery, the same "
                        "ground)")
    # the embedded segmenter is the recipe's last round's: the long one after fine-tuning
    rounds = RECIPE_ROUNDS + FINETUNE_ROUNDS + 1
    assert lines[8].endswith(f"round {rounds} of {rounds}, on the pseudo labels "
                             "of the round before")
    assert lines[8].startswith(f"Trained: {FINAL_EPOCHS} epochs, ")


def test_one_epoch_is_not_plural(tmp_path: Path) -> None:
    out = save_checkpoint(tmp_path / "m.safetensors", SiameseCAM(NetworkConfig()), ModelCard(
        NetworkConfig(), Normalization.for_dtype("uint8", 3), 64, 0.2,
        training={"epochs": 1, "best_epoch": 1}))
    result = CliRunner().invoke(cli, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "Trained: 1 epoch, best epoch 1," in result.output
    assert "Pixel size: not recorded; imagery runs on its own pixels" in result.output
    assert "Outline refinement: none" in result.output  # a card without one
    assert ("other data stretched per band, their 2nd and 98th percentiles at 0 and 255"
            in result.output)  # an older card, without its training data's percentiles
    trained_16 = ModelCard(NetworkConfig(), Normalization.for_dtype("uint8", 3).with_range(
        (100.0,) * 3, (4000.0,) * 3), 64, 0.2)
    save_checkpoint(out, SiameseCAM(NetworkConfig()), trained_16)
    result = CliRunner().invoke(cli, ["info", str(out)])
    assert "Input scaling: the band ranges it was trained with, 100..4000, 100..4000" \
        in result.output


def test_a_file_that_is_no_model_is_one_error_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.safetensors"
    bogus.write_text("not a checkpoint")
    result = CliRunner().invoke(cli, ["info", str(bogus), "--json"])
    assert result.exit_code != 0
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert "notes.safetensors" in result.output
