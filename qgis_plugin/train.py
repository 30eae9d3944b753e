"""``kdmsi:trainmodel``: a change model from areas drawn in QGIS, by ``kdmsi-geo train``.

The user draws polygons on the two dates (a scratch or memory layer will do, or a selection)
and marks each as changed or not in a field of their choice; the algorithm copies them into
a GeoPackage with the field kdmsi-geo reads, runs the training out of process with one
monotonic progress bar and Cancel, and reports what the training chose.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from .algorithm import (
    DEVICE_HELP,
    DEVICES,
    SETUP_HELP,
    TRAINING_HELP_URL,
    KdmsiAlgorithm,
    advanced,
    is_set,
    model_card,
)
from .inputs import (
    LABEL_FIELD,
    band_subset,
    check_two_images,
    date_order_warning,
    labels_geopackage,
    local_raster,
)
from .runner import RunLog, Stage, Stages, run_core

STARTING = "Starting kdmsi-geo (loading PyTorch, sampling tiles in the label areas)..."
ONE_STAGE = [
    Stage(r"train|epoch (\d+)/(\d+)", 90, "Training"),
    Stage("calibrate threshold", 10, "Calibrating the change threshold"),
]
TWO_STAGES = [
    Stage(r"train|epoch (\d+)/(\d+)", 35, "Training"),
    Stage("calibrate threshold", 3, "Calibrating the change threshold"),
    Stage(r"stage 1|pseudo labels: maps|pseudo labels: masks", 4,
          "Labelling the training tiles from the first stage's maps"),
    Stage(r"stage 2 epoch (\d+)/(\d+)", 25, "Training the segmentation network"),
    Stage("stage 2: calibrate threshold", 3, "Calibrating its change threshold"),
    Stage(r"round 2: pseudo labels: (?:maps|masks)", 4,
          "Labelling the training tiles again from the segmentation network's maps"),
    Stage(r"round 2: stage 2 epoch (\d+)/(\d+)", 23, "Training the segmentation network again"),
    Stage("round 2: stage 2: calibrate threshold", 3, "Calibrating its change threshold"),
]
STAGES = {2: Stages(TWO_STAGES, STARTING), 1: Stages(ONE_STAGE, STARTING)}
STAGE_CHOICES = ["2", "1"]
WORDING = {"--labels": "LABELS", "--tile-size": "TILE_SIZE", "--epochs": "EPOCHS",
           "--time-budget": "TIME_BUDGET", "--samples": "SAMPLES", "--device": "DEVICE",
           "--stages": "STAGES"}
DEFAULT_TILE_SIZE = 128
DEFAULT_SAMPLES = 2000


class TrainModelAlgorithm(KdmsiAlgorithm):
    """Trains a KD-MSI model from label areas drawn over two images."""

    HELP = {
        "T1": "The earlier image: a local raster file (GeoTIFF or another GDAL format).",
        "T2": "The later image, same bands as T1 and a different file.",
        "LABELS": "Polygons drawn over the images (any polygon layer, a memory layer, or only "
                  "its selected features): areas where something changed, and areas where "
                  "nothing did, at least one tile wide. Draw both kinds.",
        "CHANGED_FIELD": "The field that says whether something changed inside each area: "
                         "1 (or true) changed, 0 (or false) not. Default: changed.",
        "EPOCHS": "Passes of the first stage over the training tiles. Default (empty): "
                  "kdmsi-geo's default run (600 optimiser steps). Training stops early when "
                  "validation stops improving, and the best model seen is kept.",
        "TIME_BUDGET": "Stop the first stage after this many minutes and keep its best model "
                       "so far. Default (empty): no limit.",
        "BANDS": "The bands of T1 and T2 to train on, in this order; detection with the "
                 "new model needs the same bands. Default (none chosen): all bands.",
        "TILE_SIZE": "Side, in pixels, of the tiles sampled inside the label areas. "
                     f"Default: {DEFAULT_TILE_SIZE}.",
        "SAMPLES": f"Number of training tiles sampled. Default: {DEFAULT_SAMPLES}.",
        "NATIVE_RESOLUTION": "Train on the pixels as they are. Default (unchecked): images "
                             "finer than the starting model's training data (e.g. a 0.2-m "
                             "orthophoto for the default model, trained at 0.5 m) are "
                             "trained on at the model's resolution, each tile covering the "
                             "ground it would there; the new model then runs at that "
                             "resolution in Detect changes too. Unchanged areas must be at "
                             "least one such tile wide.",
        "START_MODEL": "A model to refine instead of the default one: a file this algorithm "
                       "wrote before (e.g. for a neighbouring area), or any kdmsi-geo model "
                       "that carries its first stage. Its architecture is used. Default "
                       "(empty): the default model.",
        "STAGES": "2: the KD-MSI network, then a segmentation network trained on its maps, "
                  "which outlines changes at full resolution, and a second one trained on "
                  "the first one's maps. 1: the KD-MSI network alone, in "
                  "a fraction of the time, with coarser, rounder changes. Default: 2.",
        "DEVICE": DEVICE_HELP,
        "OUTPUT": "The model file to write (.safetensors); use it as Model in Detect changes. "
                  "Written only when training completes: a cancelled run leaves none.",
    }
    TAGS = ("train", "training", "fine-tune", "model", "label", "labels", "change detection",
            "change", "difference", "compare", "deep learning", "weakly supervised", "KD-MSI")

    def createInstance(self) -> TrainModelAlgorithm:
        return TrainModelAlgorithm()

    def name(self) -> str:
        return "trainmodel"

    def displayName(self) -> str:
        return self.tr("Train a change model")

    def shortDescription(self) -> str:
        return self.tr("A KD-MSI change model from areas drawn over two images.")

    def helpUrl(self) -> str:
        return TRAINING_HELP_URL

    def shortHelpString(self) -> str:
        return self.tr(
            "<p>Trains a change detector from areas you draw: polygons where something "
            "changed between the two images and polygons where nothing did, told apart by a "
            "field. Only these area labels are used, never a pixel mask: the network learns "
            "to find the changes inside the areas by itself (KD-MSI).</p>"
            "<p>The log ends with what the training chose: the best check's epoch, its "
            "validation AUC and the calibrated threshold. Use the model file in Detect "
            "changes.</p>"
            f"{SETUP_HELP}"
        ) + self.parameter_help()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        integer = QgsProcessingParameterNumber.Integer
        self.add_parameters([
            QgsProcessingParameterRasterLayer("T1", self.tr("Image before (T1)")),
            QgsProcessingParameterRasterLayer("T2", self.tr("Image after (T2)")),
            QgsProcessingParameterFeatureSource(
                "LABELS", self.tr("Label areas (changed and unchanged polygons)"),
                types=[QgsProcessing.TypeVectorPolygon]),
            QgsProcessingParameterField(
                "CHANGED_FIELD", self.tr("Changed field (1 changed, 0 not)"),
                defaultValue=LABEL_FIELD, parentLayerParameterName="LABELS"),
            QgsProcessingParameterNumber(
                "EPOCHS", self.tr("Epochs (empty: kdmsi-geo's default)"), type=integer,
                optional=True, minValue=1),
            QgsProcessingParameterNumber(
                "TIME_BUDGET", self.tr("Time budget in minutes (empty: none)"),
                type=QgsProcessingParameterNumber.Double, optional=True, minValue=0.01),
            QgsProcessingParameterEnum(
                "STAGES", self.tr("Stages (2: sharp outlines; 1: faster)"),
                options=STAGE_CHOICES, defaultValue="2", usesStaticStrings=True),
            QgsProcessingParameterBand(
                "BANDS", self.tr("Bands (none: all bands)"), parentLayerParameterName="T1",
                optional=True, allowMultiple=True),
            advanced(QgsProcessingParameterNumber(
                "TILE_SIZE", self.tr("Tile size in pixels"), type=integer,
                defaultValue=DEFAULT_TILE_SIZE, minValue=16)),
            advanced(QgsProcessingParameterNumber(
                "SAMPLES", self.tr("Training tiles"), type=integer,
                defaultValue=DEFAULT_SAMPLES, minValue=8)),
            advanced(QgsProcessingParameterBoolean(
                "NATIVE_RESOLUTION", self.tr("Train at the images' own resolution, even "
                                             "where finer than the model's"),
                defaultValue=False)),
            advanced(QgsProcessingParameterFile(
                "START_MODEL", self.tr("Start from model (empty: the default model)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="kdmsi-geo model (*.safetensors)", optional=True)),
            advanced(QgsProcessingParameterEnum(
                "DEVICE", self.tr("Device"), options=DEVICES, defaultValue="auto",
                usesStaticStrings=True)),
            QgsProcessingParameterFileDestination(
                "OUTPUT", self.tr("Model file"),
                fileFilter="kdmsi-geo model (*.safetensors)"),
        ])
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD", self.tr("Calibrated threshold")))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", self.tr("Best epoch")))
        self.addOutput(QgsProcessingOutputNumber("VAL_AUC", self.tr("Validation AUC")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        log = RunLog(feedback)
        t1, t2 = self.check_inputs(parameters, context)
        warning = date_order_warning(t1, t2)
        if warning:
            log.warning(warning + " The model learns changes from T1 to T2 as given.")
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.endswith(".safetensors"):
            raise QgsProcessingException(
                f"The model file {output} must end in .safetensors; choose another name.")
        stages = int(self.parameterAsEnumString(parameters, "STAGES", context) or 2)
        executable = self.executable()
        scratch = tempfile.mkdtemp(prefix="kdmsi-train-")
        try:
            source = self.parameterAsSource(parameters, "LABELS", context)
            field = self.parameterAsString(parameters, "CHANGED_FIELD", context) or LABEL_FIELD
            if source is None or source.fields().indexOf(field) < 0:
                raise QgsProcessingException(
                    f"The label areas have no field '{field}'; choose the field that holds 1 "
                    "where something changed and 0 where nothing did.")
            labels = os.path.join(scratch, "labels.gpkg")
            changed, unchanged = labels_geopackage(source, field, labels,
                                                   context.transformContext())
            log.info(f"Label areas: {changed} changed, {unchanged} unchanged.")
            bands = self.parameterAsInts(parameters, "BANDS", context)
            if bands:
                t1 = band_subset(t1, bands, scratch, "t1")
                t2 = band_subset(t2, bands, scratch, "t2")
            command = [executable, "train", "--t1", t1, "--t2", t2, "--labels", labels,
                       "-o", output, "--overwrite", "--progress", "json",
                       "--tile-size", str(self.parameterAsInt(parameters, "TILE_SIZE", context)),
                       "--samples", str(self.parameterAsInt(parameters, "SAMPLES", context)),
                       "--device", self.parameterAsEnumString(parameters, "DEVICE", context),
                       "--stages", str(stages)]
            if self.parameterAsBoolean(parameters, "NATIVE_RESOLUTION", context):
                command.append("--native-resolution")
            if is_set(parameters.get("EPOCHS")):
                command += ["--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context))]
            start = self.parameterAsFile(parameters, "START_MODEL", context)
            if start:
                command += ["--init", start]
            if is_set(parameters.get("TIME_BUDGET")):
                minutes = self.parameterAsDouble(parameters, "TIME_BUDGET", context)
                command += ["--time-budget", f"{minutes:g}"]
            summary = run_core(command, feedback, STAGES[stages], log, WORDING)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            # The core keeps a two-stage run's intermediate results beside the model so that
            # the same command resumes; this algorithm samples new tiles on every run, so
            # they would only fill the user's folder.
            shutil.rmtree(os.path.splitext(output)[0] + ".stages", ignore_errors=True)
        card = model_card(executable, output, feedback)
        best_auc = _best_auc(card)
        training = card.get("training", {})
        log.info(
            f"Best check: epoch {training.get('best_epoch', summary.get('best_epoch'))}, "
            f"validation AUC {'n/a' if best_auc is None else f'{best_auc:.3f}'}; calibrated "
            f"threshold {card['threshold']:.3f}; {training.get('stopped', 'completed')}.")
        return {"OUTPUT": output, "THRESHOLD": card["threshold"],
                "BEST_EPOCH": training.get("best_epoch", summary.get("best_epoch")),
                "VAL_AUC": best_auc}

    def check_inputs(self, parameters: dict[str, Any],
                context: QgsProcessingContext) -> tuple[str, str]:
        t1 = local_raster(self.parameterAsRasterLayer(parameters, "T1", context), "T1")
        t2 = local_raster(self.parameterAsRasterLayer(parameters, "T2", context), "T2")
        check_two_images(t1, t2)
        return t1, t2


def _best_auc(card: dict) -> float | None:
    """The validation AUC of the epoch a segmenter kept, or the highest of a student's
    checks (the one it kept), if it validated."""
    training = card.get("training", {})
    history = training.get("history", [])
    if card.get("kind") == "segmenter":
        kept = [h.get("val_auc") for h in history if h.get("epoch") == training.get("best_epoch")]
        return kept[0] if kept else None
    scores = [h.get("val_auc") for h in history]
    scores = [s for s in scores if s is not None]
    return max(scores) if scores else None
