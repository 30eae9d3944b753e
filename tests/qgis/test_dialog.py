"""The desktop side: the plugin's action opens Processing's dialog, which runs in the background
and adds the styled outputs to the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qgis.core import (
    QgsColorRampLegendNode,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeLayer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.gui import QgsBrowserGuiModel
from qgis.PyQt.QtCore import QEventLoop, Qt, QTimer
from qgis.PyQt.QtWidgets import QProgressBar

from tests.qgis.conftest import make_data

ALG = "kdmsi:detectchanges"


@pytest.fixture(scope="module", autouse=True)
def browser_model(qgis_iface) -> Iterator[QgsBrowserGuiModel]:
    """pytest-qgis's iface lacks the browser model that Processing's dialog asks QGIS for."""
    model = QgsBrowserGuiModel()
    qgis_iface.browserModel = lambda: model
    yield model
    del qgis_iface.browserModel


def test_action_opens_the_algorithm_dialog(plugin, qgis_iface) -> None:
    assert plugin.action.objectName() == "kdmsiDetectChanges"
    qgis_iface.addPluginToRasterMenu.assert_any_call("KD-MSI change detection", plugin.action)

    plugin.action.trigger()

    dialog = plugin.dialog
    try:
        assert dialog.isVisible() and not dialog.isModal()
        assert dialog.algorithm().id() == ALG
    finally:
        dialog.close()


def _offered_images(dialog) -> tuple[str | None, str | None]:
    """The layers the dialog's T1 and T2 boxes hold (None when empty)."""
    wrappers = dialog.mainWidget().wrappers
    return tuple(wrappers[name].parameterValue() for name in ("T1", "T2"))


def test_dialog_does_not_offer_one_raster_as_both_images(
        plugin, pair, qgis_new_project: QgsProject) -> None:
    qgis_new_project.addMapLayer(QgsRasterLayer(pair["t1"], "only"))
    dialog = plugin.open_dialog()
    try:
        assert _offered_images(dialog) == (None, None)
    finally:
        dialog.close()


def test_training_action_opens_the_training_dialog(
        plugin, pair, qgis_new_project: QgsProject) -> None:
    assert plugin.train_action.objectName() == "kdmsiTrainModel"
    qgis_new_project.addMapLayer(QgsRasterLayer(pair["t1"], "only"))
    plugin.train_action.trigger()
    dialog = plugin.train_dialog
    try:
        assert dialog.isVisible() and not dialog.isModal()
        assert dialog.algorithm().id() == "kdmsi:trainmodel"
        assert _offered_images(dialog) == (None, None)
    finally:
        dialog.close()


def test_dialog_does_not_guess_the_order_of_undated_images(
        plugin, pair, qgis_new_project: QgsProject) -> None:
    qgis_new_project.addMapLayers([QgsRasterLayer(pair["t2"], "t2"),
                                   QgsRasterLayer(pair["t1"], "t1")])
    dialog = plugin.open_dialog()
    try:
        assert _offered_images(dialog) == (None, None)
    finally:
        dialog.close()


def test_dialog_orders_dated_images_by_acquisition_date(
        plugin, qgis_new_project: QgsProject, tmp_path: Path) -> None:
    dated = make_data("pair", str(tmp_path), "--size", "64", "--dates", "2018-04-02,2022-09-30")
    # The later image is added first (it ends up below the earlier one in the layer tree).
    later = qgis_new_project.addMapLayer(QgsRasterLayer(dated["t2"], "later"))
    earlier = qgis_new_project.addMapLayer(QgsRasterLayer(dated["t1"], "earlier"))
    dialog = plugin.open_dialog()
    try:
        assert _offered_images(dialog) == (earlier.id(), later.id())
    finally:
        dialog.close()


def test_dialog_runs_in_background_and_adds_styled_outputs(
        plugin, pair, random_model, qgis_new_project: QgsProject, tmp_path: Path) -> None:
    t1 = QgsRasterLayer(pair["t1"], "before")
    t2 = QgsRasterLayer(pair["t2"], "after")
    qgis_new_project.addMapLayers([t1, t2])
    plugin.action.trigger()
    dialog = plugin.dialog
    dialog.setParameters({
        "T1": t1, "T2": t2, "MODEL": random_model, "TILE_SIZE": 128, "SCALES": "1",
        "MIN_AREA": 0, "PROBABILITY": str(tmp_path / "probability.tif"),
        "CHANGES": str(tmp_path / "changes.gpkg"),
    })
    shown_progress: list[int] = []
    finished: list[tuple[bool, dict]] = []
    dialog.findChild(QProgressBar).valueChanged.connect(
        lambda value: None if finished else shown_progress.append(value))
    dialog.algorithmFinished.connect(lambda ok, results: finished.append((ok, results)))
    ticks: list[int] = []
    ticker = QTimer()
    ticker.timeout.connect(lambda: ticks.append(1))
    ticker.start(50)
    loop = QEventLoop()
    dialog.algorithmFinished.connect(loop.quit)
    QTimer.singleShot(120_000, loop.quit)

    dialog.runAlgorithm()
    loop.exec_()
    ticker.stop()

    assert [ok for ok, _ in finished] == [True]
    results = finished[0][1]
    # The run took place off the main thread: the event loop kept serving timers meanwhile.
    assert len(ticks) >= 10
    # One bar for the whole run, never moving back until the run is over.
    assert shown_progress == sorted(shown_progress) and shown_progress[-1] == 100

    loaded = {layer.source(): layer for layer in qgis_new_project.mapLayers().values()}
    probability = loaded[str(tmp_path / "probability.tif")]
    changes = next(layer for source, layer in loaded.items()
                   if source.startswith(str(tmp_path / "changes.gpkg")))
    assert probability.isValid() and changes.isValid()
    # Named after the inputs, so that two runs can be told apart.
    assert probability.name() == "Change probability before → after"
    assert changes.name() == "Changes before → after"

    # The ramp starts at the threshold the run used; below it the imagery shows through.
    threshold = results["THRESHOLD_USED"]
    renderer = probability.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert renderer.classificationMin() == pytest.approx(threshold)
    assert threshold < renderer.classificationMax() <= 1.0
    low = renderer.rasterTransparency().transparentSingleValuePixelList()
    assert [(p.min, p.percentTransparent) for p in low] == [(0.0, 100.0)]
    assert low[0].max == pytest.approx(threshold)
    ramp = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert ramp[0].value == pytest.approx(threshold)
    legend = probability.legend().createLayerTreeModelLegendNodes(
        QgsLayerTreeLayer(probability))
    assert any(isinstance(node, QgsColorRampLegendNode) for node in legend)

    # Polygons are filled by mean_prob over the same span, with a legend.
    assert isinstance(changes, QgsVectorLayer)
    graduated = changes.renderer()
    assert isinstance(graduated, QgsGraduatedSymbolRenderer)
    assert graduated.classAttribute() == "mean_prob"
    ranges = graduated.ranges()
    assert ranges[0].lowerValue() == pytest.approx(threshold)
    assert ranges[-1].upperValue() >= 1.0
    assert all(r.symbol().symbolLayer(0).brushStyle() != Qt.NoBrush for r in ranges)
    assert len({r.symbol().color().name() for r in ranges}) == len(ranges)
    assert [item.label() for item in graduated.legendSymbolItems()] == [
        r.label() for r in ranges]
    assert not changes.labelsEnabled()
