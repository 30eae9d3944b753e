"""Training at the start model's resolution: reduced tiles, the rule, and what train records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdmsi_core.checkpoint import read_card
from kdmsi_core.cli.main import cli
from kdmsi_train.datasets import PairStore, TileFolder, read_tile
from kdmsi_train.reduce import reduce_tile, training_reduction, write_reduced_tiles
from kdmsi_train.synth import write_tile_dataset
from kdmsi_train.trainer import TrainConfig

FAST = ["--epochs", "1", "--stage2-epochs", "1", "--rounds", "1", "--batch-size", "8",
        "--device", "cpu", "--progress", "none"]


@pytest.fixture(scope="module")
def fine(tmp_path_factory) -> Path:
    """Generated tiles of 64 px at 0.25 m: twice as fine as the embedded model's data."""
    return write_tile_dataset(tmp_path_factory.mktemp("fine") / "set", seed=11, scenes=4,
                              scene_size=256, tile_size=64, pixel_size=0.25)


def test_the_rule_follows_detect_and_the_start():
    embedded = TrainConfig()  # starts from the embedded model, trained at 0.5 m
    assert training_reduction(0.25, embedded, native=False) == 0.5
    assert training_reduction(0.25, embedded, native=True) == 1.0
    assert training_reduction(1.0, embedded, native=False) == 1.0  # never enlarged
    assert training_reduction(None, embedded, native=False) == 1.0  # size unknown
    # from scratch, ImageNet weights, or the embedded model unfit: nothing learnt at 0.5 m
    for config in (TrainConfig(init="scratch"), TrainConfig(pretrained="r18.pth"),
                   TrainConfig(backbone="resnet50"), TrainConfig(student="minus")):
        assert training_reduction(0.25, config, native=False) == 1.0


def test_a_reduced_tile_keeps_its_type_range_and_level():
    flat = np.full((4, 64, 64), 40000, np.uint16)
    assert np.array_equal(reduce_tile(flat, 0.5), np.full((4, 32, 32), 40000, np.uint16))
    step = np.zeros((1, 64, 64), np.uint8)
    step[:, :, 32:] = 255  # bicubic overshoots at an edge: clipped to the type's range
    small = reduce_tile(step, 0.3)
    assert small.shape == (1, 19, 19) and small.dtype == np.uint8
    assert small[0, :, 0].max() == 0 and small[0, :, -1].min() == 255
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, None].repeat(64, axis=1)
    assert reduce_tile(ramp, 0.5).dtype == np.float32
    assert reduce_tile(ramp, 0.5)[0, 0, 5] == pytest.approx(ramp[0, 0, 10:12].mean(), abs=0.01)


def test_reduced_tiles_keep_names_labels_and_the_look_of_the_scene(fine, tmp_path):
    out = write_reduced_tiles(fine, tmp_path / "reduced", 0.5)
    for split in ("train", "val"):
        before, after = TileFolder.open(fine, split), TileFolder.open(out, split)
        assert after.names == [str(Path(n).with_suffix(".tif")) for n in before.names]
        assert np.array_equal(after.labels, before.labels)
    assert not (out / "list" / "test_label.txt").exists()  # test tiles stay for evaluate
    assert PairStore(TileFolder.open(out, "train")).shape[1:] == (32, 32)
    name = TileFolder.open(fine, "train").names[0]
    a = read_tile(fine / "A" / name).astype(float)
    b = read_tile(out / "A" / str(Path(name).with_suffix(".tif"))).astype(float)
    assert abs(a.mean() - b.mean()) < 2 and b.std() > 0.5 * a.std()
    assert [p.name for p in tmp_path.iterdir()] == ["reduced"]  # no temporary left


@pytest.mark.slow
def test_train_on_finer_tiles_learns_at_the_models_resolution(fine, tmp_path):
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(cli, ["train", str(fine), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.pixel_size == 0.5 and card.training["resolution_factor"] == 0.5
    assert card.tile_size == 32  # learnt on the reduced tiles ...
    assert (tmp_path / "m.stages" / "tiles" / "list" / "train_label.txt").is_file()
    first = read_card(tmp_path / "m.stages" / "stage1.safetensors")
    assert first.pixel_size == 0.5 and first.tile_size == 32  # ... both stages
    # the refined maps' threshold is matched on the val pairs as detect reads and refines
    # them: on their own 0.25-m pixels, at half the card's scales
    assert card.training["refined_threshold_on"] == {
        "split": "val", "scales": [s / 2 for s in card.scales], "pixel_size": 0.25,
        "radius": 2 * card.refine.radius}  # the windows widened as detect widens them
    assert 0 < card.refine.threshold < 1
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    assert "Pixel size: 0.5 m, its training data's (0.25-m pixels reduced to it)" in info
    native = tmp_path / "n.safetensors"
    result = CliRunner().invoke(cli, ["train", str(fine), "-o", str(native),
                                      "--native-resolution", *FAST])
    assert result.exit_code == 0, result.output
    card = read_card(native)
    assert card.pixel_size == 0.25 and card.tile_size == 64
    assert "resolution_factor" not in card.training
    assert card.training["refined_threshold_on"] == {
        "split": "val", "scales": list(card.scales), "pixel_size": None,
        "radius": card.refine.radius}
    assert not (tmp_path / "n.stages" / "tiles").exists()
    one = tmp_path / "one.safetensors"  # the first stage alone reduces in a passing folder
    result = CliRunner().invoke(cli, ["train", str(fine), "-o", str(one), "--stages", "1",
                                      *FAST])
    assert result.exit_code == 0, result.output
    assert read_card(one).pixel_size == 0.5 and read_card(one).tile_size == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
