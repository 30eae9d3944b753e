"""Training in QGIS: ``kdmsi:trainmodel`` from drawn areas, the shipped graphical model, and
``kdmsi:modelinfo``, all running the real ``kdmsi-geo`` (a few optimiser steps on small tiles,
so that the tests stay quick; what training achieves is tested with the core)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import processing
import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
)

from tests.qgis.conftest import make_data
from tests.qgis.recording import RecordingFeedback, core_children, drawn_layer

TRAIN = "kdmsi:trainmodel"
TINY = {"EPOCHS": 1, "TILE_SIZE": 64, "SAMPLES": 48, "DEVICE": "cpu"}
MODEL3 = "kdmsi:Train a model and detect changes"


def test_trains_from_the_selected_drawn_areas(plugin, pair, qgis_new_project, core_executable,
                                              tmp_path: Path) -> None:
    layer = drawn_layer(pair)
    # One more area with a value training cannot use: only a selection leaves it out.
    stray = QgsFeature(layer.fields())
    stray.setGeometry(QgsGeometry.fromWkt("POLYGON((500000 5499990, 500010 5499990, "
                                          "500010 5500000, 500000 5500000, 500000 5499990))"))
    stray.setAttribute("is_change", 7)
    layer.dataProvider().addFeatures([stray])
    qgis_new_project.addMapLayer(layer)
    layer.selectByExpression('"is_change" IN (0, 1)')
    model = tmp_path / "drawn.safetensors"
    feedback = RecordingFeedback()

    result = processing.run(TRAIN, {
        "T1": pair["t1"], "T2": pair["t2"], "CHANGED_FIELD": "is_change", **TINY,
        "LABELS": QgsProcessingFeatureSourceDefinition(layer.id(), selectedFeaturesOnly=True),
        "OUTPUT": str(model),
    }, feedback=feedback)

    assert result["OUTPUT"] == str(model) and model.is_file()
    command = feedback.commands[-1]
    for option in ("train", "--t1", "--t2", "--labels", "--epochs 1", "--tile-size 64",
                   "--samples 48", "--progress json", "--stages 2"):
        assert option in command
    assert "--native-resolution" not in command  # finer images: at the model's resolution
    assert feedback.progress == sorted(feedback.progress) and feedback.progress[-1] == 100
    assert feedback.texts[0][0] < 1.0
    texts = [text for _, text in feedback.texts]
    # both stages and the second round, in order, each once; their intermediate results
    # do not stay behind
    order = ["Training", "Labelling the training tiles from the first stage's maps",
             "Training the segmentation network",
             "Labelling the training tiles again from the segmentation network's maps",
             "Training the segmentation network again"]
    by_length = sorted(order, key=len, reverse=True)
    started = [next((label for label in by_length if text.startswith(label)), None)
               for text in texts]
    assert [label for label in started if label] == order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drawn.safetensors"]
    assert 0.0 < result["THRESHOLD"] < 1.0
    summary = [line for line in feedback.log if line.startswith("Best check")]
    assert len(summary) == 1
    assert "validation AUC" in summary[0] and f"{result['THRESHOLD']:.3f}" in summary[0]

    # The card of the new model, as kdmsi:modelinfo shows it.
    info_feedback = RecordingFeedback()
    info = processing.run("kdmsi:modelinfo", {"MODEL": str(model)}, feedback=info_feedback)
    assert info["BANDS"] == 3 and info["TILE_SIZE"] == 64
    assert info["THRESHOLD"] == pytest.approx(result["THRESHOLD"])
    # the threshold Detect changes cuts the new model's refined maps at
    new_card = json.loads(subprocess.run([core_executable, "info", str(model), "--json"],
                                         capture_output=True, text=True, check=True).stdout)
    assert info["REFINED_THRESHOLD"] == pytest.approx(new_card["refine"]["threshold"])
    assert info["KIND"] == "segmenter" and info["TRAINING"]
    assert any(line.startswith("Bands: 3") for line in info_feedback.log)

    # The new model carries its first stage, so a later run can refine it (e.g. with more
    # areas) instead of the default model.
    refined = tmp_path / "refined.safetensors"
    feedback = RecordingFeedback()
    processing.run(TRAIN, {
        "T1": pair["t1"], "T2": pair["t2"], "CHANGED_FIELD": "is_change", **TINY,
        "LABELS": QgsProcessingFeatureSourceDefinition(layer.id(), selectedFeaturesOnly=True),
        "STAGES": "1", "START_MODEL": str(model), "NATIVE_RESOLUTION": True,
        "OUTPUT": str(refined),
    }, feedback=feedback)
    assert f"--init {model}" in feedback.commands[-1]
    assert "--native-resolution" in feedback.commands[-1]
    card = json.loads(subprocess.run([core_executable, "info", str(refined), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert card["training"]["start"] == str(model)


def test_modelinfo_shows_the_default_model(plugin, core_executable) -> None:
    feedback = RecordingFeedback()
    info = processing.run("kdmsi:modelinfo", {}, feedback=feedback)
    card = json.loads(subprocess.run([core_executable, "info", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    rounds = card["training"]["rounds"]
    # the embedded segmenter draws its map on its decoder's stride-4 grid
    assert info["BANDS"] == 3 and info["OUTPUT_STRIDE"] == 4 and info["KIND"] == "segmenter"
    assert 0.0 < info["THRESHOLD"] < 1.0
    assert info["REFINED_THRESHOLD"] == card["refine"]["threshold"] != info["THRESHOLD"]
    assert any(line.startswith(f"Threshold: {card['threshold']:.3f} (") and line.endswith(
        f"; {card['refine']['threshold']:.3f} on the refined maps, which Detect changes "
        "applies there") for line in feedback.log)
    assert "epoch" in info["TRAINING"] and "segmenter" in info["TRAINING"]
    assert f"(round {rounds} of {rounds}: those of the round before)" in info["TRAINING"]
    assert any(line.startswith("Carries its first stage (cam-student") for line in feedback.log)


def test_label_values_are_checked_before_training(plugin, pair, tmp_path: Path,
                                                  monkeypatch) -> None:
    layer = drawn_layer(pair, field="state")
    layer.dataProvider().changeAttributeValues({1: {0: 2}})
    started = time.monotonic()
    with pytest.raises(QgsProcessingException, match="'state'") as raised:
        processing.run(TRAIN, {"T1": pair["t1"], "T2": pair["t2"], "LABELS": layer,
                               "CHANGED_FIELD": "state", **TINY,
                               "OUTPUT": str(tmp_path / "never.safetensors")})
    assert "set it to 1 where something changed and 0 where nothing did" in str(raised.value)
    assert time.monotonic() - started < 1.0
    assert not core_children("train") and list(tmp_path.iterdir()) == []


def test_cancel_during_training_leaves_no_model(plugin, tmp_path: Path) -> None:
    # Four bands of which training uses three, and a time budget: both reach the command.
    four = make_data("pair", str(tmp_path / "rgbn"), "--size", "384", "--bands", "4")
    feedback = RecordingFeedback()
    seen: dict[str, object] = {}

    def cancel_once_training(progress: float) -> None:
        if "at" not in seen and 0 < progress < 100:
            seen["pids"] = core_children("train")
            seen["at"] = time.monotonic()
            feedback.cancel()

    feedback.progressChanged.connect(cancel_once_training)
    output = tmp_path / "models"
    output.mkdir()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run(TRAIN, {"T1": four["t1"], "T2": four["t2"], "BANDS": [1, 2, 3],
                               "LABELS": drawn_layer(four), "CHANGED_FIELD": "is_change",
                               **TINY, "EPOCHS": 20, "TIME_BUDGET": 5,
                               "OUTPUT": str(output / "cancelled.safetensors")},
                       feedback=feedback)
    assert seen["pids"], "kdmsi-geo train was not running when the run was cancelled"
    assert time.monotonic() - seen["at"] < 6.0
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen["pids"])
    assert list(output.iterdir()) == []
    command = feedback.commands[-1]
    assert "--time-budget 5" in command and "--epochs 20" in command
    # The bands were chosen through a virtual raster, removed with the run's other scratch.
    scratch = Path(command.split("--t1 ")[1].split()[0]).parent
    assert command.split("--t1 ")[1].split()[0].endswith("t1.vrt")
    assert not scratch.exists()


def test_shipped_graphical_model_chains_training_and_detection(plugin) -> None:
    """It runs from qgis_process in test_packaging; here: what the toolbox shows."""
    registry = QgsApplication.processingRegistry()
    model = registry.createAlgorithmById(MODEL3)
    assert model is not None, [a.id() for a in registry.providerById("kdmsi").algorithms()]
    assert model.group() == "Change detection"
    children = model.childAlgorithms()
    assert {c.algorithmId() for c in children.values()} == {TRAIN, "kdmsi:detectchanges"}
    source = children["detect"].parameterSources()["MODEL"][0]
    assert (source.outputChildId(), source.outputName()) == ("train", "OUTPUT")
    assert {p.name() for p in model.destinationParameterDefinitions()} == {
        "train:MODEL", "detect:PROBABILITY", "detect:CHANGES"}
    assert "Default" in model.shortHelpString()
