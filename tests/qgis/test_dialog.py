"""The desktop side: the plugin's action opens Processing's dialog, which runs in the background
and adds the styled outputs to the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qgis.core import (
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.gui import QgsBrowserGuiModel
from qgis.PyQt.QtCore import QEventLoop, QTimer
from qgis.PyQt.QtGui import QBrush
from qgis.PyQt.QtWidgets import QProgressBar

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


def test_dialog_offers_the_two_newest_rasters_as_t1_and_t2(
        plugin, pair, qgis_new_project: QgsProject) -> None:
    t1 = qgis_new_project.addMapLayer(QgsRasterLayer(pair["t1"], "t1"))
    t2 = qgis_new_project.addMapLayer(QgsRasterLayer(pair["t2"], "t2"))
    dialog = plugin.open_dialog()
    try:
        parameters = dialog.createProcessingParameters()
        assert (parameters["T1"], parameters["T2"]) == (t1.id(), t2.id())
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
        "PROBABILITY": str(tmp_path / "probability.tif"),
        "CHANGES": str(tmp_path / "changes.gpkg"),
    })
    shown_progress: list[int] = []
    dialog.findChild(QProgressBar).valueChanged.connect(shown_progress.append)
    finished: list[bool] = []
    dialog.algorithmFinished.connect(lambda ok, _results: finished.append(ok))
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

    assert finished == [True]
    # The run took place off the main thread: the event loop kept serving timers meanwhile.
    assert len(ticks) >= 10
    assert shown_progress and max(shown_progress) == 100

    loaded = {layer.source(): layer for layer in qgis_new_project.mapLayers().values()}
    probability = loaded[str(tmp_path / "probability.tif")]
    changes = next(layer for source, layer in loaded.items()
                   if source.startswith(str(tmp_path / "changes.gpkg")))
    assert probability.isValid() and changes.isValid()

    renderer = probability.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    low = renderer.rasterTransparency().transparentSingleValuePixelList()
    assert [(p.min, p.max, p.percentTransparent) for p in low] == [(0.0, 0.2, 100.0)]
    assert renderer.shader().rasterShaderFunction().colorRampItemList()

    assert isinstance(changes, QgsVectorLayer)
    assert isinstance(changes.renderer(), QgsSingleSymbolRenderer)
    fill = changes.renderer().symbol().symbolLayer(0)
    assert fill.brushStyle() == QBrush().style()  # no fill, outline only
    assert fill.strokeWidth() > 0
    assert not changes.labelsEnabled()
