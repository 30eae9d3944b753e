"""The ``kdmsi`` Processing provider and its one setting, the path of ``kdmsi-geo``."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithm import ICON, DetectChangesAlgorithm
from .runner import EXECUTABLE_ENV, EXECUTABLE_SETTING


class KdmsiProvider(QgsProcessingProvider):
    """Registers ``kdmsi:detectchanges`` and the 'kdmsi-geo executable' option."""

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
        self.addAlgorithm(DetectChangesAlgorithm())

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
