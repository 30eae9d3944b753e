"""``kdmsi:detectchanges``: parameters in, one ``kdmsi-geo detect`` out, styled layers back.

Every decision about the images (alignment, tiling, inference, thresholds, polygons) is
the core's; the algorithm checks what it can check cheaply before starting the process
(local files, two different images, an existing model file), fills in the defaults that
depend on the model and T1's pixel size, and styles the outputs from what the run used.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .algorithm import (
    DEVICE_HELP,
    DEVICES,
    PAPER,
    SETUP_HELP,
    KdmsiAlgorithm,
    advanced,
    is_set,
)
from .inputs import check_two_images, date_order_warning, local_raster
from .runner import RunLog, Stage, Stages, run_core
from .styling import OutputStyler, ProbabilityRange, probability_range

# Typical shares of a run's time (a 1024² pair on the CPU: 1 %, 97 %, 1 %, 2 %), so that
# one bar crosses all stages at an even pace.
STAGES = Stages([
    Stage("prepare", 2, "Preparing the images"),
    Stage("detect", 94, "Detecting changes"),
    Stage("vectorize", 2, "Tracing change polygons"),
    Stage("write", 2, "Writing the probability raster"),
], starting="Starting kdmsi-geo (loading PyTorch and the model)...")
# The core's option names in its messages, as the parameters are named (the dialog's help
# lists each parameter with this name, and qgis_process takes it).
WORDING = {"--bands": "BANDS", "--tile-size": "TILE_SIZE", "--overlap": "OVERLAP",
           "--scales": "SCALES", "--threshold": "THRESHOLD", "--low-threshold": "LOW_THRESHOLD",
           "--refine-radius": "REFINE_RADIUS",
           "--min-area": "MIN_AREA", "--model": "MODEL", "--device": "DEVICE"}


class DetectChangesAlgorithm(KdmsiAlgorithm):
    """Change detection between two co-registered rasters with a KD-MSI model."""

    HELP = {
        "T1": "The earlier image: a local raster file (GeoTIFF or another GDAL format). "
              "The outputs are on its grid and in its CRS.",
        "T2": "The later image, same bands as T1 and a different file; resampled onto T1's "
              "grid when the grids differ. Only the area both images cover with valid data "
              "is analysed. A warning is given when the images' metadata date T1 after T2.",
        "MODEL": "A kdmsi-geo checkpoint (.safetensors), e.g. one made by Train a change "
                 "model. Default (empty): the model shipped with kdmsi-geo, which expects 3 "
                 "bands in red, green, blue order. Model information shows any model's bands, "
                 "tile size and threshold.",
        "BANDS": "The bands of T1 and T2 to feed the model, in the model's order, e.g. "
                 "bands 1, 2, 3 of a 4-band RGB+NIR image for the default model. "
                 "Default (none chosen): all bands, when their number fits the model.",
        "THRESHOLD": "Probability above which a pixel counts as changed (0 to 1). "
                     "Default (empty): the threshold calibrated for the model.",
        "LOW_THRESHOLD": "Pixels above this probability, but not above the threshold, count "
                         "as changed where they touch a change within 8 pixels (0 to the "
                         "threshold). The model's refined maps already reach each change's "
                         "edges, so on most imagery this costs accuracy; try it, close to "
                         "the threshold, only where changes come out fragmented or thinner "
                         "than they are. Default (empty): the threshold, plain thresholding.",
        "REFINE_RADIUS": "Radius in pixels of the windows in which the change probability "
                         "is fitted to both images, so that outlines follow the images' "
                         "edges (a changed roof's outline, not a blob around it). 0 turns it "
                         "off. Default (empty): the model's setting (12 px for the default "
                         "model at its 0.5-m pixels, widened on finer imagery to cover the "
                         "same ground, e.g. 40 px at 0.15 m; none for models without one).",
        "MIN_AREA": "Change regions smaller than this many square metres are dropped. "
                    "Default (empty): 2 cells of the model's output grid at "
                    "the pixel size it runs at: T1's, or the model's own on finer imagery "
                    "(8 m² for the default model at 0.5 m pixels and finer); the log states "
                    "the value used. 0 keeps every region.",
        "TILE_SIZE": "Side of the square tiles, in pixels, that the model sees. "
                     "Default (empty): 256, larger on imagery finer than the model's.",
        "OVERLAP": "Pixels shared by neighbouring tiles, blended to avoid seams. "
                   "Default (empty): 32, more with larger tiles.",
        "NATIVE_RESOLUTION": "Run the model on the pixels as they are. Default (unchecked): "
                             "imagery finer than the model's training data (e.g. a 0.15 m "
                             "orthophoto for a model trained at 0.5 m) is read at the "
                             "model's resolution, where it finds more; the outputs keep "
                             "T1's pixels either way.",
        "SCALES": "Comma-separated image scales for multiscale sigmoid inference, e.g. "
                  "0.5,1,1.25,2. Fewer scales run faster. Default (empty): the model's scales.",
        "DEVICE": DEVICE_HELP,
        "PROBABILITY": "Change probability per pixel (0 to 1), a Cloud Optimized GeoTIFF; "
                       "loaded transparent below the threshold, coloured from the threshold "
                       "to the 95th percentile of the probabilities above it.",
        "CHANGES": "One polygon per change region, with area_m2, mean_prob and max_prob, "
                   "in a GeoPackage (layer 'changes'); loaded filled by mean_prob.",
    }
    TAGS = ("change detection", "change", "difference", "compare", "comparison", "before",
            "after", "bitemporal", "multitemporal", "time series", "deep learning",
            "weakly supervised", "KD-MSI", "remote sensing")

    def __init__(self) -> None:
        super().__init__()
        self._loads: dict[str, tuple[bool, str]] = {}
        self._span: ProbabilityRange | None = None

    def createInstance(self) -> DetectChangesAlgorithm:
        return DetectChangesAlgorithm()

    def name(self) -> str:
        return "detectchanges"

    def displayName(self) -> str:
        return self.tr("Detect changes")

    def shortDescription(self) -> str:
        return self.tr("Change probability and change polygons between two images (KD-MSI).")

    def shortHelpString(self) -> str:
        return self.tr(
            "<p>Finds where two georeferenced images of the same place differ, with a "
            "change detector trained from image-level labels only: knowledge distillation "
            "from a teacher network into a student whose class activation maps are read out "
            "by multiscale sigmoid inference (KD-MSI).</p>"
            f"<p>Method: {PAPER}.</p>"
            f"{SETUP_HELP}"
        ) + self.parameter_help()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        double, integer = QgsProcessingParameterNumber.Double, QgsProcessingParameterNumber.Integer
        self.add_parameters([
            QgsProcessingParameterRasterLayer("T1", self.tr("Image before (T1)")),
            QgsProcessingParameterRasterLayer("T2", self.tr("Image after (T2)")),
            QgsProcessingParameterFile(
                "MODEL", self.tr("Model (empty: the default model, 3 bands red, green, blue)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="kdmsi-geo models (*.safetensors *.onnx)",
                optional=True),
            QgsProcessingParameterBand(
                "BANDS", self.tr("Bands, in the model's order (none: all bands)"),
                parentLayerParameterName="T1", optional=True, allowMultiple=True),
            QgsProcessingParameterNumber(
                "THRESHOLD", self.tr("Change threshold (empty: the model's)"), type=double,
                optional=True, minValue=0.0, maxValue=1.0),
            advanced(QgsProcessingParameterNumber(
                "LOW_THRESHOLD", self.tr("Lower threshold for a change's rim (empty: none)"),
                type=double, optional=True, minValue=0.0, maxValue=1.0)),
            advanced(QgsProcessingParameterNumber(
                "REFINE_RADIUS", self.tr("Outline refinement radius in pixels (empty: the "
                                         "model's; 0: off)"),
                type=integer, optional=True, minValue=0, maxValue=64)),
            QgsProcessingParameterNumber(
                "MIN_AREA", self.tr("Minimum change area in m² (empty: 2 cells "
                                    "of the model's output grid)"),
                type=double, optional=True, minValue=0.0),
            advanced(QgsProcessingParameterNumber(
                "TILE_SIZE", self.tr("Tile size in pixels (empty: 256)"), type=integer,
                optional=True, minValue=1)),
            advanced(QgsProcessingParameterNumber(
                "OVERLAP", self.tr("Tile overlap in pixels (empty: 32)"), type=integer,
                optional=True, minValue=0)),
            advanced(QgsProcessingParameterString(
                "SCALES", self.tr("Inference scales (empty: the model's)"), optional=True)),
            advanced(QgsProcessingParameterBoolean(
                "NATIVE_RESOLUTION", self.tr("Run at the images' own resolution, even where "
                                             "finer than the model's"), defaultValue=False)),
            advanced(QgsProcessingParameterEnum(
                "DEVICE", self.tr("Device"), options=DEVICES, defaultValue="auto",
                usesStaticStrings=True)),
            QgsProcessingParameterRasterDestination(
                "PROBABILITY", self.tr("Change probability")),
            QgsProcessingParameterVectorDestination(
                "CHANGES", self.tr("Changes"), type=QgsProcessing.TypeVectorPolygon),
        ])
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", self.tr("Number of change polygons")))
        self.addOutput(QgsProcessingOutputNumber("CHANGED_AREA_M2", self.tr("Changed area (m²)")))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD_USED", self.tr("Threshold used")))
        self.addOutput(QgsProcessingOutputNumber("MIN_AREA_USED",
                                                 self.tr("Minimum area used (m²)")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        log = RunLog(feedback)
        t1, t2, model = self.check_inputs(parameters, context)
        warning = date_order_warning(t1, t2)
        if warning:
            log.warning(warning + " The outputs show what changed from T1 to T2 as given.")
        executable = self.executable()
        probability = self.parameterAsOutputLayer(parameters, "PROBABILITY", context)
        changes = self.parameterAsOutputLayer(parameters, "CHANGES", context)
        command = [executable, "detect", t1, t2, "-o", changes, "--probability", probability,
                   "--progress", "json", "--overwrite",
                   "--device", self.parameterAsEnumString(parameters, "DEVICE", context)]
        if model:
            command += ["--model", model]
        bands = self.parameterAsInts(parameters, "BANDS", context)
        if bands:
            command += ["--bands", ",".join(str(b) for b in bands)]
        if self.parameterAsBoolean(parameters, "NATIVE_RESOLUTION", context):
            command.append("--native-resolution")
        for name, option, as_value in (
            ("THRESHOLD", "--threshold", self.parameterAsDouble),
            ("LOW_THRESHOLD", "--low-threshold", self.parameterAsDouble),
            ("MIN_AREA", "--min-area", self.parameterAsDouble),
            ("REFINE_RADIUS", "--refine-radius", self.parameterAsInt),
            ("TILE_SIZE", "--tile-size", self.parameterAsInt),
            ("OVERLAP", "--overlap", self.parameterAsInt),
            ("SCALES", "--scales", self.parameterAsString),
        ):
            if is_set(parameters.get(name)):
                command += [option, str(as_value(parameters, name, context)).replace(" ", "")]

        summary = run_core(command, feedback, STAGES, log, WORDING)
        threshold, min_area = float(summary["threshold"]), float(summary["min_area"])
        if not is_set(parameters.get("MIN_AREA")):
            log.info(f"Minimum change area: {min_area:.3g} m², 2 cells of the model's output "
                     "grid at the pixel size it read T1 at.")
        factor = float(summary.get("resolution_factor", 1.0))
        if factor < 1.0:
            radius = int(summary.get("refine_radius", 0))
            widened = (f"; outline refinement windows widened to {radius} px to cover the same "
                       "ground" if radius and not is_set(parameters.get("REFINE_RADIUS"))
                       else "")
            log.info(f"T1's pixels ({summary['pixel_size_m']:g} m) are finer than the model's: "
                     f"it ran on them reduced to {factor:g} of their size, scales "
                     f"{', '.join(f'{s:g}' for s in summary['scales'])}{widened}.")
        self._span = probability_range(probability, threshold)
        log.info(f"Colours run from the threshold {self._span.low:.3f} to {self._span.high:.3f}, "
                 "the 95th percentile of the probabilities above it.")
        names = " → ".join(self.parameterAsRasterLayer(parameters, key, context).name()
                           for key in ("T1", "T2"))
        self._loads = {probability: (True, f"Change probability {names}"),
                       changes: (False, f"Changes {names}")}
        return {
            "PROBABILITY": probability,
            "CHANGES": changes,
            "POLYGONS": summary.get("polygons"),
            "CHANGED_AREA_M2": summary.get("changed_area_m2"),
            "THRESHOLD_USED": threshold,
            "MIN_AREA_USED": min_area,
        }

    def postProcessAlgorithm(self, context: QgsProcessingContext,
                             feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """Name and style the outputs that Processing is about to load (dialog, models)."""
        for path, (raster, name) in self._loads.items():
            if self._span is not None and context.willLoadLayerOnCompletion(path):
                details = context.layerToLoadOnCompletionDetails(path)
                details.name = name
                details.forceName = True
                details.setPostProcessor(OutputStyler.create(raster, self._span, name))
        return {}

    def check_inputs(self, parameters: dict[str, Any],
                context: QgsProcessingContext) -> tuple[str, str, str]:
        """T1 and T2 as two different local files, and the model file if one is given."""
        t1 = local_raster(self.parameterAsRasterLayer(parameters, "T1", context), "T1")
        t2 = local_raster(self.parameterAsRasterLayer(parameters, "T2", context), "T2")
        check_two_images(t1, t2)
        return t1, t2, self.model_file(parameters, context)
