"""The ``kdmsi`` Processing provider, its one setting (the path of ``kdmsi-geo``), and the
graphical models shipped with the plugin."""

from __future__ import annotations

import os
from pathlib import Path

from qgis.core import QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithm import ICON
from .detect import DetectChangesAlgorithm
from .modelinfo import ModelInfoAlgorithm
from .runner import EXECUTABLE_ENV, EXECUTABLE_SETTING
from .train import TrainModelAlgorithm

MODELS = Path(os.path.dirname(__file__)) / "models"


class KdmsiProvider(QgsProcessingProvider):
    """Registers the kdmsi algorithms, the shipped models and the 'kdmsi-geo executable'
    option."""

    def id(self) -> str:
        return "kdmsi"

    def name(self) -> str:
        return "KD-MSI change detection"

    def longName(self) -> str:
        return "KD-MSI change detection (kdmsi-geo)"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def svgIconPath(self) -> str:
        return ICON

    def load(self) -> bool:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), EXECUTABLE_SETTING,
            f"kdmsi-geo executable (empty: ${EXECUTABLE_ENV}, then the PATH)", "",
            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self) -> None:
        for algorithm in (DetectChangesAlgorithm(), TrainModelAlgorithm(), ModelInfoAlgorithm()):
            self.addAlgorithm(algorithm)
        for path in sorted(MODELS.glob("*.model3")):
            model = QgsProcessingModelAlgorithm()
            if model.fromFile(str(path)):
                self.addAlgorithm(model)

    # kdmsi-geo writes a GeoTIFF and a GeoPackage, nothing else: offer only those.
    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        return ["gpkg"]

    def defaultRasterFileExtension(self) -> str:
        return "tif"

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        return "gpkg"

    def supportsNonFileBasedOutput(self) -> bool:
        return False
