"""What the plugin's Processing algorithms share: group, icon, help, and reaching kdmsi-geo.

Each algorithm turns its parameters into one ``kdmsi-geo`` command run out of process; the
help of every parameter says what an empty value means, so defaults are never a guess.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .runner import EXECUTABLE_SETTING, find_executable, read_json

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")
PAPER = (
    "B. Lu, C. Ding, J. Bi, D. Song, \"Weakly Supervised Change Detection via Knowledge "
    "Distillation and Multiscale Sigmoid Inference\", arXiv 2403.05796, 2024"
)
REPOSITORY = "https://github.com/kdmsi-geo/kdmsi-geo"
# The README's QGIS section, as GitHub anchors its headings.
HELP_URL = f"{REPOSITORY}#qgis-plugin"
TRAINING_HELP_URL = f"{REPOSITORY}#train-a-model-in-qgis"
DEVICES = ["auto", "cpu", "cuda"]
DEVICE_HELP = ("Where kdmsi-geo runs the network: auto (a CUDA GPU when there is one, else "
               "the CPU), cpu or cuda. Default: auto.")
SETUP_HELP = ("<p>Runs the <code>kdmsi-geo</code> command in its own Python environment; "
              "set its path under Processing &gt; Options &gt; Providers &gt; KD-MSI change "
              "detection if it is not on the PATH.</p>")


class KdmsiAlgorithm(QgsProcessingAlgorithm):
    """Base of the kdmsi algorithms: one group, one icon, help listing every parameter."""

    # Parameter name -> help shown as tooltip, by `qgis_process help` and in the help panel.
    HELP: dict[str, str] = {}
    TAGS: tuple[str, ...] = ()

    def group(self) -> str:
        return self.tr("Change detection")

    def groupId(self) -> str:
        return "changedetection"

    def tags(self) -> list[str]:
        return [self.tr(tag) for tag in self.TAGS]

    def helpUrl(self) -> str:
        return HELP_URL

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def add_parameters(self, parameters: list[QgsProcessingParameterDefinition]) -> None:
        for parameter in parameters:
            parameter.setHelp(self.HELP[parameter.name()])
            self.addParameter(parameter)

    def parameter_help(self) -> str:
        """Every parameter with its help (which states its default), as an HTML list."""
        items = "".join(
            f"<li><b>{p.description()}</b> (<code>{p.name()}</code>): {self.HELP[p.name()]}"
            "</li>"
            for p in self.parameterDefinitions()
        )
        return f"<ul>{items}</ul>"

    def executable(self) -> str:
        from processing.core.ProcessingConfig import ProcessingConfig

        return find_executable(ProcessingConfig.getSetting(EXECUTABLE_SETTING))

    def check_inputs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        """Read and check the inputs, raising QgsProcessingException with one sentence; the
        dialog calls it before a run starts, the run itself to get the inputs."""

    def checkParameterValues(self, parameters: dict[str, Any],
                             context: QgsProcessingContext) -> tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self.check_inputs(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    def model_file(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The MODEL file if one is given ('' for the default model); a missing one is refused
        here, before anything starts."""
        model = self.parameterAsFile(parameters, "MODEL", context) or ""
        if model and not os.path.isfile(model):
            raise QgsProcessingException(
                f"The model file {model} does not exist: choose a kdmsi-geo checkpoint "
                "(.safetensors) or leave Model empty to use the default model."
            )
        return model


def advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def is_set(value: Any) -> bool:
    return value is not None and value != ""


def model_card(executable: str, model: str,
               feedback: QgsProcessingFeedback | None = None) -> dict:
    """The card of ``model`` ('' for the default model), as ``kdmsi-geo info --json`` prints it."""
    return read_json([executable, "info", *([model] if model else []), "--json"], feedback)
