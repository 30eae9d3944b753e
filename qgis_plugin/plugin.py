"""The plugin object QGIS creates: the Processing provider, plus toolbar and menu actions.

The actions open Processing's own dialogs for ``kdmsi:detectchanges`` and
``kdmsi:trainmodel``, which already run the algorithm as a background task with a progress
bar and a Cancel button, and load the outputs (styled by the algorithm) into the project
when it succeeds.
"""

from __future__ import annotations

from qgis.core import QgsApplication, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QComboBox, QDialog

from .algorithm import ICON
from .inputs import acquisition_date
from .provider import KdmsiProvider

ALGORITHM_ID = "kdmsi:detectchanges"
TRAIN_ALGORITHM_ID = "kdmsi:trainmodel"
MENU = "KD-MSI change detection"


class KdmsiPlugin:
    """Provider for Processing (and qgis_process); actions and dialogs for the desktop."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: KdmsiProvider | None = None
        self.action: QAction | None = None
        self.train_action: QAction | None = None
        self.dialog: QDialog | None = None
        self.train_dialog: QDialog | None = None

    def initProcessing(self) -> None:
        self.provider = KdmsiProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        window = self.iface.mainWindow()
        self.action = QAction(QIcon(ICON), "Detect changes (KD-MSI)...", window)
        self.action.setObjectName("kdmsiDetectChanges")
        self.action.setToolTip("Detect changes between two raster layers with kdmsi-geo")
        self.action.triggered.connect(self.open_dialog)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.train_action = QAction(QIcon(ICON), "Train a change model (KD-MSI)...", window)
        self.train_action.setObjectName("kdmsiTrainModel")
        self.train_action.setToolTip("Train a change model from areas drawn over two images")
        self.train_action.triggered.connect(self.open_training_dialog)
        self.iface.addPluginToRasterMenu(MENU, self.train_action)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.action = None
        if self.train_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.train_action)
            self.train_action = None
        for dialog in (self.dialog, self.train_dialog):
            if _is_open(dialog):
                dialog.close()
        self.dialog = self.train_dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def open_dialog(self) -> QDialog:
        """Show the detection dialog without blocking QGIS (one at a time)."""
        if not _is_open(self.dialog):
            self.dialog = _algorithm_dialog(ALGORITHM_ID)
        return _show(self.dialog)

    def open_training_dialog(self) -> QDialog:
        """Show the training dialog without blocking QGIS (one at a time)."""
        if not _is_open(self.train_dialog):
            self.train_dialog = _algorithm_dialog(TRAIN_ALGORITHM_ID)
        return _show(self.train_dialog)


def _algorithm_dialog(algorithm_id: str) -> QDialog:
    """Processing's dialog for an algorithm, with T1 and T2 filled in only when unambiguous."""
    import processing

    dialog = processing.createAlgorithmDialog(algorithm_id)
    images = default_images(QgsProject.instance())
    if images:
        dialog.setParameters(images)
    else:
        _leave_images_empty(dialog)
    return dialog


def _show(dialog: QDialog) -> QDialog:
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog


def _is_open(dialog: QDialog | None) -> bool:
    """Processing's dialog deletes itself when closed."""
    return dialog is not None and not sip.isdeleted(dialog) and dialog.isVisible()


def default_images(project: QgsProject) -> dict[str, QgsRasterLayer]:
    """T1 and T2 when the project says which is which, else nothing.

    That is when it holds exactly two local rasters whose metadata date them differently;
    layer order or names are guesses that swap the dates silently when wrong. Web basemaps
    are not counted because the algorithm refuses them.
    """
    layers = [node.layer() for node in project.layerTreeRoot().findLayers()]
    rasters = [layer for layer in layers
               if isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal"]
    if len(rasters) != 2:
        return {}
    first, second = (acquisition_date(layer.source()) for layer in rasters)
    if first is None or second is None or first == second:
        return {}
    earlier, later = rasters if first < second else rasters[::-1]
    return {"T1": earlier, "T2": later}


def _leave_images_empty(dialog: QDialog) -> None:
    """Processing fills every required layer box with the first layer, so one raster would be
    offered as both images; empty boxes make the user choose instead."""
    from qgis.gui import QgsMapLayerComboBox

    for child in dialog.findChildren(QComboBox):
        if child.metaObject().className() != "QgsMapLayerComboBox":
            continue
        combo = sip.cast(child, QgsMapLayerComboBox)  # PyQt hands it over as a QComboBox
        if combo.filters() & QgsMapLayerProxyModel.RasterLayer:
            combo.setAllowEmptyLayer(True)
            combo.setLayer(None)
