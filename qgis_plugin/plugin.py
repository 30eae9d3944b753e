"""The plugin object QGIS creates: the Processing provider, plus a toolbar and menu action.

The action opens Processing's own dialog for ``kdmsi:detectchanges``, which already runs
the algorithm as a background task with a progress bar and a Cancel button, and loads the
outputs (styled by the algorithm) into the project when it succeeds.
"""

from __future__ import annotations

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QDialog

from .algorithm import ICON
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
            self.dialog.setParameters(_default_images())
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def _dialog_open(self) -> bool:
        """Processing's dialog deletes itself when closed."""
        dialog = self.dialog
        return dialog is not None and not sip.isdeleted(dialog) and dialog.isVisible()


def _default_images() -> dict[str, QgsRasterLayer]:
    """T1 and T2 from the two topmost raster files, the newer on top as after adding T2 last.

    Left alone, Processing would offer the same layer as both images; web basemaps are
    skipped because the algorithm refuses them.
    """
    layers = [node.layer() for node in QgsProject.instance().layerTreeRoot().findLayers()]
    rasters = [layer for layer in layers
               if isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal"]
    return {"T1": rasters[1], "T2": rasters[0]} if len(rasters) >= 2 else {}
