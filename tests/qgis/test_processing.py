"""``kdmsi:detectchanges`` through ``processing.run`` in QGIS 3.22, running the real core."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import processing
import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tests.qgis.conftest import make_data
from tests.qgis.recording import MessageTab, RecordingFeedback, core_children

ALG = "kdmsi:detectchanges"
FAST = {"TILE_SIZE": 128, "SCALES": "1"}
NEAR_M = 3.0


def test_provider_parameters_and_help(plugin) -> None:
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("kdmsi").name() == "KD-MSI change detection"
    alg = registry.algorithmById(ALG)
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["T1", "T2", "MODEL", "BANDS", "THRESHOLD", "LOW_THRESHOLD", "REFINE_RADIUS",
                     "MIN_AREA", "TILE_SIZE", "OVERLAP", "SCALES", "NATIVE_RESOLUTION", "DEVICE",
                     "PROBABILITY", "CHANGES"]
    required = {p.name() for p in alg.parameterDefinitions()
                if not p.flags() & p.FlagOptional and p.defaultValue() is None}
    assert required == {"T1", "T2", "PROBABILITY", "CHANGES"}
    assert all(p.help() for p in alg.parameterDefinitions())
    assert {o.name() for o in alg.outputDefinitions()} >= {"PROBABILITY", "CHANGES"}
    help_text = alg.shortHelpString()
    assert "arXiv 2403.05796" in help_text
    assert "Multiscale Sigmoid Inference" in help_text
    # Every parameter that may be left empty says in the help what empty means.
    for parameter in alg.parameterDefinitions():
        if parameter.flags() & parameter.FlagOptional or parameter.defaultValue() is not None:
            assert "Default" in parameter.help(), parameter.name()
            assert parameter.help() in help_text
    assert "red, green, blue" in alg.parameterDefinition("MODEL").help()


def test_found_in_the_toolbox_by_what_users_type(plugin) -> None:
    from qgis.gui import QgsProcessingToolboxModel, QgsProcessingToolboxProxyModel

    registry = QgsApplication.processingRegistry()
    ids = {"kdmsi:detectchanges", "kdmsi:trainmodel", "kdmsi:modelinfo"}
    for alg_id in ids:
        alg = registry.algorithmById(alg_id)
        assert alg.group() == "Change detection" and alg.groupId() == "changedetection"
        assert alg.helpUrl().startswith("https://github.com/kdmsi-geo/kdmsi-geo#")
        for parameter in alg.parameterDefinitions():
            if parameter.flags() & parameter.FlagOptional or parameter.defaultValue():
                assert "Default" in parameter.help(), (alg_id, parameter.name())
    assert registry.algorithmById(ALG).helpUrl().endswith("#qgis-plugin")

    model = QgsProcessingToolboxModel(None, registry)
    proxy = QgsProcessingToolboxProxyModel(None, registry)
    proxy.setSourceModel(model)

    def found(text: str) -> set[str]:
        proxy.setFilterString(text)
        hits, pending = set(), [proxy.index(r, 0) for r in range(proxy.rowCount())]
        while pending:
            index = pending.pop()
            alg = model.algorithmForIndex(proxy.mapToSource(index))
            if alg is not None:
                hits.add(alg.id())
            pending += [proxy.index(r, 0, index) for r in range(proxy.rowCount(index))]
        return hits

    for text in ("difference", "compare", "change", "before after"):
        assert ALG in found(text), text
    assert "kdmsi:trainmodel" in found("train")


def test_detects_the_change_with_the_default_model(plugin, pair, tmp_path: Path) -> None:
    result = processing.run(ALG, {
        "T1": pair["t1"], "T2": pair["t2"], **FAST,
        "PROBABILITY": str(tmp_path / "probability.tif"),
        "CHANGES": str(tmp_path / "changes.gpkg"),
    })

    t1_crs = QgsRasterLayer(pair["t1"], "t1").crs()
    probability = QgsRasterLayer(result["PROBABILITY"], "probability")
    changes = QgsVectorLayer(result["CHANGES"], "changes", "ogr")
    assert probability.isValid() and changes.isValid()
    assert probability.crs() == t1_crs == changes.crs()
    assert t1_crs == QgsCoordinateReferenceSystem("EPSG:32633")
    assert changes.featureCount() == result["POLYGONS"] > 0
    # No speckle: the default minimum area is 2 cells of the map's grid, 4 pixels for the
    # embedded segmenter (its decoder's stride).
    assert result["MIN_AREA_USED"] == pytest.approx(2 * 4 * 4 * 0.5 * 0.5)
    assert min(f["area_m2"] for f in changes.getFeatures()) >= result["MIN_AREA_USED"]

    # Polygons lie on the change: it is hit, and the detected area falls on or next to it
    # (maps are smooth, hence the few metres of slack) far more often than
    # area spread at random over the scene would.
    truth = _changed_area(pair["mask"]).buffer(NEAR_M, 8)
    detected = QgsGeometry.unaryUnion([f.geometry() for f in changes.getFeatures()])
    assert detected.intersects(truth)
    scene = QgsGeometry.fromRect(probability.extent())
    near_share = detected.intersection(truth).area() / detected.area()
    chance = truth.intersection(scene).area() / scene.area()
    assert near_share > 3 * chance, (near_share, chance)


def test_all_options_progress_and_processing_setting(plugin, pair, random_model,
                                                      monkeypatch) -> None:
    from processing.core.ProcessingConfig import ProcessingConfig

    # The Processing option wins over the environment variable and the PATH.
    ProcessingConfig.setSettingValue("KDMSI_GEO_EXECUTABLE", os.environ["KDMSI_GEO_EXECUTABLE"])
    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", "/nonexistent/kdmsi-geo")
    monkeypatch.setenv("PATH", "/nonexistent")
    feedback = RecordingFeedback()
    result = processing.run(ALG, {
        "T1": pair["t1"], "T2": pair["t2"], "MODEL": random_model, "THRESHOLD": 0.6,
        "LOW_THRESHOLD": 0.3, "REFINE_RADIUS": 6, "MIN_AREA": 2.0, "TILE_SIZE": 128, "OVERLAP": 16,
        "SCALES": "1, 0.5", "DEVICE": "cpu",
        "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT",
    }, feedback=feedback)

    command = feedback.commands[-1]
    for option in ("--model", "--threshold 0.6", "--low-threshold 0.3", "--refine-radius 6",
                   "--min-area 2",
                   "--tile-size 128",
                   "--overlap 16", "--scales 1,0.5", "--device cpu", "--progress json"):
        assert option in command
    assert "--bands" not in command
    assert result["MIN_AREA_USED"] == 2.0 and result["THRESHOLD_USED"] == 0.6
    assert QgsRasterLayer(result["PROBABILITY"], "p").isValid()
    assert Path(result["CHANGES"]).suffix == ".gpkg"
    assert QgsVectorLayer(result["CHANGES"], "c", "ogr").isValid()


def test_one_monotonic_bar_and_a_rationed_log(plugin, pair, random_model) -> None:
    feedback = RecordingFeedback()
    with MessageTab("KD-MSI") as tab:
        processing.run(ALG, {
            "T1": pair["t1"], "T2": pair["t2"], "MODEL": random_model, "TILE_SIZE": 64,
            "SCALES": "1", "MIN_AREA": 0, "DEVICE": "cpu",
            "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT",
        }, feedback=feedback)

    bar = feedback.progress
    assert bar == sorted(bar) and bar[-1] == 100
    assert len(set(round(p) for p in bar)) > 5  # it moves through the run, not in one jump
    # Text from the first second, before the core has printed anything.
    assert feedback.texts[0][0] < 1.0 and "Starting kdmsi-geo" in feedback.texts[0][1]
    texts = [text for _, text in feedback.texts]
    for stage in ("Preparing the images", "Detecting changes", "Tracing change polygons",
                  "Writing the probability raster"):
        assert sum(text.startswith(stage + ":") for text in texts) == 1, (stage, texts)
    # 9 tiles of 64 px: the core reports each, the log gets at most one line per 10 %.
    assert sum("%" in text for text in texts) <= 10
    assert len(feedback.log) <= 25, feedback.log
    assert any("kdmsi-geo" in m and "detect" in m for m in tab.messages)
    assert any("change polygon(s)" in m for m in tab.messages)


def test_bands_reach_the_command(plugin, tmp_path: Path) -> None:
    four = make_data("pair", str(tmp_path / "rgbn"), "--size", "128", "--bands", "4")
    run = {"T1": four["t1"], "T2": four["t2"], "SCALES": "1", "TILE_SIZE": 64, "MIN_AREA": 0,
           "DEVICE": "cpu", "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"}
    # Without a band choice the core refuses 4 bands for a 3-band model, and the message
    # names the dialog's parameter, not the command-line option.
    with pytest.raises(QgsProcessingException) as raised:
        processing.run(ALG, run)
    assert "4 data band(s)" in str(raised.value) and "BANDS" in str(raised.value)
    assert "--bands" not in str(raised.value)

    feedback = RecordingFeedback()
    result = processing.run(ALG, {**run, "BANDS": [1, 2, 3]}, feedback=feedback)
    assert "--bands 1,2,3" in feedback.commands[-1]
    assert QgsVectorLayer(result["CHANGES"], "c", "ogr").isValid()


def test_finer_imagery_runs_at_the_models_resolution_unless_asked(plugin,
                                                                  tmp_path: Path) -> None:
    fine = make_data("pair", str(tmp_path / "fine"), "--size", "192", "--pixel-size", "0.25")
    run = {"T1": fine["t1"], "T2": fine["t2"], "DEVICE": "cpu",
           "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"}
    feedback = RecordingFeedback()
    result = processing.run(ALG, run, feedback=feedback)  # the default model learnt from 0.5 m
    assert "--native-resolution" not in feedback.commands[-1]
    said = [m for m in feedback.log if "finer than the model's" in m]
    assert len(said) == 1 and "0.25 m" in said[0] and "scales 0.5, 0.75" in said[0]
    assert "windows widened to 24 px" in said[0]  # the embedded model's 12 px at 0.5 m
    # no speck smaller than the grid the model ran on: 2 cells of 4 pixels of 0.5 m, the
    # core's default, which the log states
    assert "--min-area" not in feedback.commands[-1]
    assert result["MIN_AREA_USED"] == pytest.approx(2 * 4 * 4 * 0.5 * 0.5)
    assert any(m.startswith("Minimum change area: 8 m², 2 cells") for m in feedback.log)

    feedback = RecordingFeedback()
    result = processing.run(ALG, {**run, "NATIVE_RESOLUTION": True}, feedback=feedback)
    assert "--native-resolution" in feedback.commands[-1]
    assert not any("finer than the model's" in m for m in feedback.log)
    assert result["MIN_AREA_USED"] == pytest.approx(2 * 4 * 4 * 0.25 * 0.25)


def test_same_image_twice_is_refused_at_once(plugin, pair) -> None:
    started = time.monotonic()
    with pytest.raises(QgsProcessingException, match="same image") as raised:
        processing.run(ALG, {"T1": pair["t1"], "T2": QgsRasterLayer(pair["t1"], "copy"),
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"})
    assert time.monotonic() - started < 1.0
    assert "T1 and T2" in str(raised.value)
    assert not core_children()


def test_dates_out_of_order_are_warned(plugin, tmp_path: Path, monkeypatch) -> None:
    swapped = make_data("pair", str(tmp_path / "swapped"), "--size", "64",
                        "--dates", "2023-05-04T10:00:00Z,2019-07-01")
    # The warning comes before the core is looked for; stop the run there.
    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", str(tmp_path / "no-such-kdmsi-geo"))
    monkeypatch.setenv("PATH", str(tmp_path))
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException, match="not found"):
        processing.run(ALG, {"T1": swapped["t1"], "T2": swapped["t2"],
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"},
                       feedback=feedback)
    assert len(feedback.warnings) == 1
    assert "2023-05-04" in feedback.warnings[0] and "2019-07-01" in feedback.warnings[0]
    assert "swapped" in feedback.warnings[0]


def test_runs_as_a_step_of_a_graphical_model(plugin, pair, random_model,
                                             tmp_path: Path) -> None:
    model = QgsProcessingModelAlgorithm("change model", "tests")
    for name in ("before", "after"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name),
                                QgsProcessingModelParameter(name))
    step = QgsProcessingModelChildAlgorithm(ALG)
    step.setChildId("detect")
    sources = {"T1": QgsProcessingModelChildParameterSource.fromModelParameter("before"),
               "T2": QgsProcessingModelChildParameterSource.fromModelParameter("after")}
    sources.update({name: QgsProcessingModelChildParameterSource.fromStaticValue(value)
                    for name, value in (("MODEL", random_model), *FAST.items())})
    for name, source in sources.items():
        step.addParameterSources(name, [source])
    outputs = {}
    for name in ("PROBABILITY", "CHANGES"):
        outputs[name.lower()] = QgsProcessingModelOutput(name.lower())
        outputs[name.lower()].setChildId("detect")
        outputs[name.lower()].setChildOutputName(name)
    step.setModelOutputs(outputs)
    model.addChildAlgorithm(step)
    model.updateDestinationParameters()

    result = processing.run(model, {
        "before": pair["t1"], "after": pair["t2"],
        "detect:probability": str(tmp_path / "probability.tif"),
        "detect:changes": str(tmp_path / "changes.gpkg"),
    })
    assert QgsRasterLayer(result["detect:probability"], "p").isValid()
    assert QgsVectorLayer(result["detect:changes"], "c", "ogr").isValid()


def test_cancel_stops_the_core_and_leaves_no_outputs(plugin, large_pair, random_model,
                                                     tmp_path: Path) -> None:
    feedback = RecordingFeedback()
    seen: dict[str, object] = {}

    def cancel_once_running(progress: float) -> None:
        # Once tiles are being processed: past the share of the bar kept for preparing.
        if "at" not in seen and 10 < progress < 100:
            seen["pids"] = core_children()
            seen["at"] = time.monotonic()
            feedback.cancel()

    feedback.progressChanged.connect(cancel_once_running)
    outputs = [tmp_path / "probability.tif", tmp_path / "changes.gpkg"]
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run(ALG, {
            "T1": large_pair["t1"], "T2": large_pair["t2"], "MODEL": random_model,
            "TILE_SIZE": 128, "SCALES": "0.5,1,1.25,2",
            "PROBABILITY": str(outputs[0]), "CHANGES": str(outputs[1]),
        }, feedback=feedback)
    stopped = time.monotonic() - seen["at"]

    assert seen["pids"], "the core was not running when the run was cancelled"
    assert stopped < 2.0
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen["pids"])
    assert list(tmp_path.iterdir()) == []


def test_cancel_while_the_model_card_is_read(plugin) -> None:
    class CancelAtFirstText(RecordingFeedback):
        def setProgressText(self, text: str) -> None:
            super().setProgressText(text)
            if not self.isCanceled():
                self.cancelled_at = time.monotonic()
                self.cancel()

    feedback = CancelAtFirstText()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("kdmsi:modelinfo", {}, feedback=feedback)
    assert "model's card" in feedback.texts[0][1]
    assert time.monotonic() - feedback.cancelled_at < 1.0
    assert not core_children("info")


def test_missing_executable_says_how_to_install(plugin, pair, tmp_path: Path,
                                               monkeypatch) -> None:
    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", str(tmp_path / "no-such-kdmsi-geo"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QgsProcessingException) as raised:
        processing.run(ALG, {"T1": pair["t1"], "T2": pair["t2"],
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"})
    message = str(raised.value)
    assert "kdmsi-geo command was not found" in message
    assert "no-such-kdmsi-geo" in message
    assert "pip install 'kdmsi-geo[onnx]'" in message
    assert "Processing > Options > Providers > KD-MSI change detection" in message


def test_executable_that_cannot_start_is_reported(plugin, pair, tmp_path: Path,
                                                  monkeypatch) -> None:
    # What is left when the Python environment kdmsi-geo was installed into is removed.
    orphan = tmp_path / "kdmsi-geo"
    orphan.write_text("#!/removed/kdmsi-env/bin/python\n")
    orphan.chmod(0o755)
    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", str(orphan))
    with pytest.raises(QgsProcessingException, match="could not be started") as raised:
        processing.run(ALG, {"T1": pair["t1"], "T2": pair["t2"],
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"})
    assert str(orphan) in str(raised.value) and "pip install 'kdmsi-geo[onnx]'" in str(raised.value)


def test_core_errors_reach_the_user_verbatim(plugin, pair, core_executable,
                                             tmp_path: Path) -> None:
    not_a_model = tmp_path / "broken.safetensors"
    not_a_model.write_text("this is not a checkpoint")
    direct = subprocess.run(
        [core_executable, "detect", pair["t1"], pair["t2"], "-o", str(tmp_path / "c.gpkg"),
         "--probability", str(tmp_path / "p.tif"), "--model", str(not_a_model)],
        capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")})
    assert direct.returncode != 0 and direct.stderr.startswith("Error: ")
    sentence = direct.stderr.strip().splitlines()[-1][len("Error: "):]

    feedback = RecordingFeedback()
    with MessageTab("KD-MSI") as tab, pytest.raises(QgsProcessingException) as raised:
        processing.run(ALG, {"T1": pair["t1"], "T2": pair["t2"], "MODEL": str(not_a_model),
                             "MIN_AREA": 0, "PROBABILITY": "TEMPORARY_OUTPUT",
                             "CHANGES": "TEMPORARY_OUTPUT"}, feedback=feedback)
    assert str(raised.value) == sentence
    # Once: Processing shows the exception; the plugin does not echo it in the log too.
    assert not [line for line in feedback.log if sentence in line]
    assert sum(sentence in m for m in tab.messages) == 1


def test_missing_model_is_caught_before_the_core_starts(plugin, pair, tmp_path: Path,
                                                        monkeypatch) -> None:
    # Were the core looked for or started, the error would be about the executable.
    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", str(tmp_path / "no-such-kdmsi-geo"))
    with pytest.raises(QgsProcessingException, match="does not exist") as raised:
        processing.run(ALG, {"T1": pair["t1"], "T2": pair["t2"],
                             "MODEL": str(tmp_path / "missing.safetensors"),
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"})
    assert "missing.safetensors" in str(raised.value)
    assert not core_children()


def test_web_layers_are_refused_with_a_clear_message(plugin, pair, qgis_new_project) -> None:
    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png"
                         "&zmin=0&zmax=19", "Basemap", "wms")
    assert xyz.isValid()
    qgis_new_project.addMapLayer(xyz)
    with pytest.raises(QgsProcessingException, match="needs local rasters") as raised:
        processing.run(ALG, {"T1": xyz, "T2": pair["t2"],
                             "PROBABILITY": "TEMPORARY_OUTPUT", "CHANGES": "TEMPORARY_OUTPUT"})
    assert "Basemap" in str(raised.value)


def _changed_area(mask_path: str) -> QgsGeometry:
    """The true change region of a synthetic pair as one QGIS geometry, made by QGIS."""
    result = processing.run("gdal:polygonize", {
        "INPUT": mask_path, "BAND": 1, "FIELD": "DN", "OUTPUT": "TEMPORARY_OUTPUT"})
    layer = QgsVectorLayer(result["OUTPUT"], "mask", "ogr")
    return QgsGeometry.unaryUnion(
        [f.geometry() for f in layer.getFeatures() if f["DN"] == 1])
