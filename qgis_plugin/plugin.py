"""The plugin object QGIS creates: the Processing provider, plus a toolbar and menu action.

The action opens Processing's own dialog for ``kdmsi:detectchanges``, which already runs
the algorithm as a background task with a progress bar and a Cancel button, and loads the
outputs (styled by the algorithm) into the project when it succeeds.
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
MENU = "KD-MSI change detection"


class KdmsiPlugin:
    """Provider for Processing (and qgis_process); action and dialog for the desktop."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: KdmsiProvider | None = None
        self.action: QAction | None = None
        self.dialog: QDialog | None = None

    def initProcessing(self) -> None:
        self.provider = KdmsiProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        self.action = QAction(QIcon(ICON), "Detect changes (KD-MSI)...", self.iface.mainWindow())
        self.action.setObjectName("kdmsiDetectChanges")
        self.action.setToolTip("Detect changes between two raster layers with kdmsi-geo")
        self.action.triggered.connect(self.open_dialog)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.action = None
        if self._dialog_open():
            self.dialog.close()
        self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def open_dialog(self) -> QDialog:
        """Show the algorithm dialog without blocking QGIS (one at a time)."""
        import processing

        if not self._dialog_open():
            self.dialog = processing.createAlgorithmDialog(ALGORITHM_ID)
            images = default_images(QgsProject.instance())
            if images:
                self.dialog.setParameters(images)
            else:
                _leave_images_empty(self.dialog)
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def _dialog_open(self) -> bool:
        """Processing's dialog deletes itself when closed."""
        dialog = self.dialog
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
