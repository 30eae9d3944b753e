"""The ``kdmsi:detectchanges`` Processing algorithm: parameters in, one ``kdmsi-geo detect`` out.

Every decision about the images (alignment, tiling, inference, thresholds, polygons) is
the core's; the algorithm only checks what it can check cheaply before starting the
process (local files, an existing model file) and turns the core's answer into outputs.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .runner import EXECUTABLE_SETTING, find_executable, run_core
from .styling import OutputStyler

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")
PAPER = (
    "B. Lu, C. Ding, J. Bi, D. Song, \"Weakly Supervised Change Detection via Knowledge "
    "Distillation and Multiscale Sigmoid Inference\", arXiv 2403.05796, 2024"
)
REPOSITORY = "https://github.com/kdmsi-geo/kdmsi-geo"
DEVICES = ["auto", "cpu", "cuda"]

# One help text per parameter: shown as the parameter's tooltip, by `qgis_process help`,
# and listed in the algorithm's help panel.
HELP = {
    "T1": "The earlier image: a local raster file (GeoTIFF or another GDAL format). "
          "The outputs are on its grid and in its CRS.",
    "T2": "The later image, same bands as T1; resampled onto T1's grid when the grids differ. "
          "Only the area both images cover with valid data is analysed.",
    "MODEL": "A kdmsi-geo checkpoint (.safetensors). Leave empty to use the model "
             "shipped with kdmsi-geo.",
    "THRESHOLD": "Probability above which a pixel counts as changed (0 to 1). "
                 "Not set: the threshold calibrated for the model.",
    "MIN_AREA": "Change regions smaller than this many square metres are dropped. "
                "Not set: the kdmsi-geo default.",
    "TILE_SIZE": "Side of the square tiles, in pixels, that the model sees. "
                 "Not set: the kdmsi-geo default.",
    "OVERLAP": "Pixels shared by neighbouring tiles, blended to avoid seams. "
               "Not set: the kdmsi-geo default.",
    "SCALES": "Comma-separated image scales for multiscale sigmoid inference, e.g. "
              "0.5,1,1.25,2. Fewer scales run faster. Not set: the model's scales.",
    "DEVICE": "Where the model runs: auto (a CUDA GPU when there is one, else the CPU), "
              "cpu or cuda.",
    "PROBABILITY": "Change probability per pixel (0 to 1), a Cloud Optimized GeoTIFF.",
    "CHANGES": "One polygon per change region, with area_m2, mean_prob and max_prob, "
               "in a GeoPackage (layer 'changes').",
}


class DetectChangesAlgorithm(QgsProcessingAlgorithm):
    """Change detection between two co-registered rasters with a KD-MSI model."""

    def __init__(self) -> None:
        super().__init__()
        self._outputs: dict[str, str] = {}

    def createInstance(self) -> DetectChangesAlgorithm:
        return DetectChangesAlgorithm()

    def name(self) -> str:
        return "detectchanges"

    def displayName(self) -> str:
        return self.tr("Detect changes")

    def shortDescription(self) -> str:
        return self.tr("Change probability and change polygons between two images (KD-MSI).")

    def shortHelpString(self) -> str:
        items = "".join(
            f"<li><b>{p.description()}</b>: {HELP[p.name()]}</li>"
            for p in self.parameterDefinitions()
        )
        return self.tr(
            "<p>Finds where two georeferenced images of the same place differ, with a "
            "change detector trained from image-level labels only: knowledge distillation "
            "from a teacher network into a student whose class activation maps are read out "
            "by multiscale sigmoid inference (KD-MSI).</p>"
            f"<p>Method: {PAPER}.</p>"
            "<p>Runs the <code>kdmsi-geo</code> command in its own Python environment; "
            "set its path under Processing &gt; Options &gt; Providers &gt; KD-MSI change "
            "detection if it is not on the PATH.</p>"
            f"<ul>{items}</ul>"
        )

    def helpUrl(self) -> str:
        return REPOSITORY

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("DetectChangesAlgorithm", text)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        double, integer = QgsProcessingParameterNumber.Double, QgsProcessingParameterNumber.Integer
        parameters = [
            QgsProcessingParameterRasterLayer("T1", self.tr("Image before (T1)")),
            QgsProcessingParameterRasterLayer("T2", self.tr("Image after (T2)")),
            QgsProcessingParameterFile(
                "MODEL", self.tr("Model (empty: the default model)"),
                behavior=QgsProcessingParameterFile.File, extension="safetensors",
                optional=True),
            QgsProcessingParameterNumber(
                "THRESHOLD", self.tr("Change threshold"), type=double, optional=True,
                minValue=0.0, maxValue=1.0),
            QgsProcessingParameterNumber(
                "MIN_AREA", self.tr("Minimum change area (m²)"), type=double, optional=True,
                minValue=0.0),
            _advanced(QgsProcessingParameterNumber(
                "TILE_SIZE", self.tr("Tile size (pixels)"), type=integer, optional=True,
                minValue=1)),
            _advanced(QgsProcessingParameterNumber(
                "OVERLAP", self.tr("Tile overlap (pixels)"), type=integer, optional=True,
                minValue=0)),
            _advanced(QgsProcessingParameterString(
                "SCALES", self.tr("Inference scales"), optional=True)),
            _advanced(QgsProcessingParameterEnum(
                "DEVICE", self.tr("Device"), options=DEVICES, defaultValue="auto",
                usesStaticStrings=True)),
            QgsProcessingParameterRasterDestination(
                "PROBABILITY", self.tr("Change probability")),
            QgsProcessingParameterVectorDestination(
                "CHANGES", self.tr("Changes"), type=QgsProcessing.TypeVectorPolygon),
        ]
        for parameter in parameters:
            parameter.setHelp(HELP[parameter.name()])
            self.addParameter(parameter)
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", self.tr("Number of change polygons")))
        self.addOutput(QgsProcessingOutputNumber("CHANGED_AREA_M2", self.tr("Changed area (m²)")))

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self._inputs(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from processing.core.ProcessingConfig import ProcessingConfig

        t1, t2, model = self._inputs(parameters, context)
        executable = find_executable(ProcessingConfig.getSetting(EXECUTABLE_SETTING))
        probability = self.parameterAsOutputLayer(parameters, "PROBABILITY", context)
        changes = self.parameterAsOutputLayer(parameters, "CHANGES", context)
        command = [executable, "detect", t1, t2, "-o", changes, "--probability", probability,
                   "--progress", "json", "--overwrite",
                   "--device", self.parameterAsEnumString(parameters, "DEVICE", context)]
        if model:
            command += ["--model", model]
        for name, option, as_value in (
            ("THRESHOLD", "--threshold", self.parameterAsDouble),
            ("MIN_AREA", "--min-area", self.parameterAsDouble),
            ("TILE_SIZE", "--tile-size", self.parameterAsInt),
            ("OVERLAP", "--overlap", self.parameterAsInt),
            ("SCALES", "--scales", self.parameterAsString),
        ):
            if _is_set(parameters.get(name)):
                command += [option, str(as_value(parameters, name, context)).replace(" ", "")]
        feedback.pushCommandInfo(shlex.join(command))

        summary = run_core(command, feedback)
        self._outputs = {"PROBABILITY": probability, "CHANGES": changes}
        return {
            "PROBABILITY": probability,
            "CHANGES": changes,
            "POLYGONS": summary.get("polygons"),
            "CHANGED_AREA_M2": summary.get("changed_area_m2"),
        }

    def postProcessAlgorithm(self, context: QgsProcessingContext,
                             feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """Style the outputs that Processing is about to load (dialog, runAndLoadResults)."""
        for name, path in self._outputs.items():
            if context.willLoadLayerOnCompletion(path):
                details = context.layerToLoadOnCompletionDetails(path)
                details.setPostProcessor(OutputStyler.create(raster=name == "PROBABILITY"))
        return {}

    def _inputs(self, parameters: dict[str, Any],
                context: QgsProcessingContext) -> tuple[str, str, str]:
        """T1 and T2 as local files, and the model file if one is given."""
        t1 = _local_raster(self.parameterAsRasterLayer(parameters, "T1", context), "T1")
        t2 = _local_raster(self.parameterAsRasterLayer(parameters, "T2", context), "T2")
        model = self.parameterAsFile(parameters, "MODEL", context) or ""
        if model and not os.path.isfile(model):
            raise QgsProcessingException(
                f"The model file {model} does not exist: choose a kdmsi-geo checkpoint "
                "(.safetensors) or leave Model empty to use the default model."
            )
        return t1, t2, model


def _advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def _is_set(value: Any) -> bool:
    return value is not None and value != ""


def _local_raster(layer: QgsRasterLayer | None, label: str) -> str:
    """The file behind a raster layer; kdmsi-geo reads files, not QGIS data providers.

    Layers served by other providers (WMS/XYZ, WCS, PostGIS rasters ...) are refused rather
    than exported, because an export needs an extent and a resolution only the user can
    choose.
    """
    if layer is None:
        raise QgsProcessingException(f"{label} is not a raster layer.")
    source = layer.source()
    if layer.providerType() != "gdal" or not os.path.isfile(source):
        raise QgsProcessingException(
            f"{label} ('{layer.name()}', a {layer.providerType()} layer) is not a local raster "
            "file: this algorithm needs local rasters such as GeoTIFF; save the layer to a "
            "file first (Export > Save As...) and use that file."
        )
    return source
