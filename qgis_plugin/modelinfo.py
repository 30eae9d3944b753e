"""``kdmsi:modelinfo``: a model's card, so users can see what a model expects before using it.

The card is read by ``kdmsi-geo info --json``; the algorithm only lays it out in the log
and returns the figures a graphical model may need (bands, tile size, threshold).
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
)

from .algorithm import SETUP_HELP, KdmsiAlgorithm, model_card
from .runner import RunLog


class ModelInfoAlgorithm(KdmsiAlgorithm):
    """Shows a kdmsi-geo model's card: kind, bands, tile size, threshold, training."""

    HELP = {
        "MODEL": "A kdmsi-geo checkpoint (.safetensors). Default (empty): the model shipped "
                 "with kdmsi-geo.",
    }
    TAGS = ("model", "card", "information", "metadata", "bands", "threshold", "KD-MSI")

    def createInstance(self) -> ModelInfoAlgorithm:
        return ModelInfoAlgorithm()

    def name(self) -> str:
        return "modelinfo"

    def displayName(self) -> str:
        return self.tr("Model information")

    def shortDescription(self) -> str:
        return self.tr("What a change model expects and how it was trained.")

    def shortHelpString(self) -> str:
        return self.tr(
            "<p>Shows a model's card: its kind, the bands it expects (choose them with Bands "
            "in Detect changes), its tile size, its calibrated change threshold (and the one "
            "Detect changes applies to the refined maps), and how it was trained.</p>"
            f"{SETUP_HELP}"
        ) + self.parameter_help()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.add_parameters([
            QgsProcessingParameterFile(
                "MODEL", self.tr("Model (empty: the default model)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="kdmsi-geo models (*.safetensors *.onnx)",
                optional=True),
        ])
        for name, description in (("KIND", "Kind"), ("BAND_NAMES", "Band names"),
                                  ("TRAINING", "How it was trained")):
            self.addOutput(QgsProcessingOutputString(name, self.tr(description)))
        for name, description in (("BANDS", "Number of bands"), ("TILE_SIZE", "Tile size"),
                                  ("THRESHOLD", "Threshold"),
                                  ("REFINED_THRESHOLD", "Threshold of the refined maps"),
                                  ("OUTPUT_STRIDE", "Output stride (pixels)")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(description)))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        log = RunLog(feedback)
        model = self.model_file(parameters, context)
        log.text("Reading the model's card...")
        try:
            card = model_card(self.executable(), model, feedback)
        except QgsProcessingException as exc:
            log.error(str(exc))
            raise
        training = card.get("training", {})
        config = training.get("config", {})
        network = card["network"]
        rounds = (f" (round {training['round']} of {training['rounds']}: those of the round "
                  "before)" if training.get("round", 1) > 1 else "")
        what = (f"segmenter ({network['combination']} fusion) trained on pseudo labels{rounds}"
                if card["kind"] == "segmenter" else
                f"student ({network['combination']} fusion) taught by a "
                f"{card.get('teacher_combination') or '?'} teacher")
        how = (f"{config.get('backbone', network['backbone'])} {what}; "
               f"best epoch {training.get('best_epoch', '?')}, "
               f"{training.get('train_tiles', '?')} training tiles "
               f"({training.get('train_changed', '?')} changed), "
               f"{training.get('val_tiles', '?')} validation tiles; "
               f"{training.get('model_selection', 'selection not recorded')}; "
               f"{training.get('seconds', '?')} s")
        # the threshold detect cuts the refined maps at (cards without one: the card's)
        refined = (card.get("refine") or {}).get("threshold", card["threshold"])
        lines = [
            f"Model: {card['path']}",
            f"Kind: {card['kind']}",
            f"Bands: {card['bands']['count']} ({', '.join(card['bands']['names'])})",
            f"Tile size: {card['tile_size']} px; output stride {card['output_stride']} px; "
            f"scales {', '.join(str(s) for s in card['scales'])}",
            f"Threshold: {card['threshold']:.3f} "
            f"({card.get('threshold_rule') or 'rule not recorded'})"
            + ("" if refined == card["threshold"] else
               f"; {refined:.3f} on the refined maps, which Detect changes applies there"),
            f"Trained: {how}",
        ]
        first = card.get("first_stage")
        if first:
            lines.append(f"Carries its first stage ({first['kind']}, threshold "
                         f"{first['threshold']:.3f}), where training from this model starts")
        for line in lines:
            log.info(line)
        return {"KIND": card["kind"], "BANDS": card["bands"]["count"],
                "BAND_NAMES": ",".join(card["bands"]["names"]), "TILE_SIZE": card["tile_size"],
                "THRESHOLD": card["threshold"], "REFINED_THRESHOLD": refined,
                "OUTPUT_STRIDE": card["output_stride"],
                "TRAINING": how}
