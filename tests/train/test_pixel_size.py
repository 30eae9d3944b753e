"""What a data set says of its pixel size reaches the model card and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdmsi_core.cli.evaluate import format_table
from kdmsi_train.datasets import folder_pixel_size, raster_pixel_size, with_pixel_size
from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset
from tests.core.geodata import transform_for, write_tif


def test_a_folder_says_its_pixel_size_in_or_beside_it(tmp_path: Path) -> None:
    tiles = tmp_path / "set" / "tiles"
    tiles.mkdir(parents=True)
    assert folder_pixel_size(tiles) is None  # public data sets in PNG tiles say nothing
    (tmp_path / "set" / "synth.json").write_text(json.dumps({"pixel_size": 0.3}))
    assert folder_pixel_size(tiles) == 0.3
    (tiles / "synth.json").write_text(json.dumps({"pixel_size": 0.25}))
    assert folder_pixel_size(tiles) == 0.25
    (tiles / "synth.json").write_text("{not json")
    assert folder_pixel_size(tiles) is None
    (tiles / "synth.json").write_text(json.dumps({"pixel_size": -1}))
    assert folder_pixel_size(tiles) is None


def test_the_card_summary_carries_a_known_pixel_size_only(tmp_path: Path) -> None:
    assert with_pixel_size({"data": "x"}, None) == {"data": "x"}
    assert with_pixel_size({"data": "x"}, 0.3000000001) == {"data": "x", "pixel_size": 0.3}
    path = write_tif(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8),
                     transform=transform_for(0.4))
    assert raster_pixel_size(path) == pytest.approx(0.4)


def test_evaluate_reads_finer_tiles_at_the_models_resolution(tmp_path: Path) -> None:
    tiles = write_tile_dataset(tmp_path / "fine", seed=3, scenes=2, scene_size=128,
                               tile_size=64, pixel_size=0.25)
    matched = evaluate(tiles, None, "train")  # the embedded model learnt from 0.5-m pixels
    assert matched["pixel_size_m"] == 0.25 and matched["resolution_factor"] == 0.5
    assert matched["scales"] == [0.5, 0.75]
    # the first stage it carries is shown at the same resolution
    assert matched["stage1_scales"] == [0.25, 0.5, 0.625, 1.0]
    native = evaluate(tiles, None, "train", match_resolution=False)
    assert native["resolution_factor"] == 1.0 and native["scales"] == [1.0, 1.5]
    assert native["stage1_scales"] == [0.5, 1.0, 1.25, 2.0]
    told = evaluate(tiles, None, "train", pixel_size=1.0)  # coarser: left as it is
    assert told["resolution_factor"] == 1.0 and told["scales"] == [1.0, 1.5]
    # the same maps either way, but for the scales: the results differ
    assert matched["methods"]["msi"]["f1"] != native["methods"]["msi"]["f1"]
    said = "0.25-m tiles read at the model's resolution (scales 0.5, 0.75)"
    assert said in format_table(matched) and "model's resolution" not in format_table(native)


def test_pseudo_labels_of_finer_tiles_come_from_the_models_resolution(tmp_path: Path) -> None:
    from kdmsi_core.checkpoint import default_model_path
    from kdmsi_train.pseudo import write_pseudo_labels

    tiles = write_tile_dataset(tmp_path / "fine", seed=4, scenes=2, scene_size=128,
                               tile_size=64, pixel_size=0.25)
    summary = write_pseudo_labels(tiles, default_model_path(), tmp_path / "p")
    assert summary["resolution_factor"] == 0.5 and summary["scales"] == [0.5, 0.75]
    chosen = write_pseudo_labels(tiles, default_model_path(), tmp_path / "q", scales=(1.0,))
    assert chosen["resolution_factor"] == 1.0 and chosen["scales"] == [1.0]
