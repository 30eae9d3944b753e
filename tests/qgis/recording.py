"""What the QGIS tests record and draw: the feedback a dialog would show, the "KD-MSI" tab of
the Log Messages panel, the core processes a run started, and label areas as a user draws
them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsProcessingFeedback,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

from tests.qgis.conftest import make_data


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm reports, as the Processing dialog would show it.

    ``log`` holds every line the dialog's log would show (its progress text included, which
    Processing's dialog writes to the log too), with the seconds since the feedback was made.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()
        self.progress: list[float] = []
        self.texts: list[tuple[float, str]] = []
        self.commands: list[str] = []
        self.warnings: list[str] = []
        self.log: list[str] = []
        self.progressChanged.connect(self.progress.append)

    def setProgressText(self, text: str) -> None:
        self.texts.append((time.monotonic() - self.started, text))
        self.log.append(text)
        super().setProgressText(text)

    def pushCommandInfo(self, info: str) -> None:
        self.commands.append(info)
        self.log.append(info)
        super().pushCommandInfo(info)

    def pushInfo(self, info: str) -> None:
        self.log.append(info)
        super().pushInfo(info)

    def pushConsoleInfo(self, info: str) -> None:
        self.log.append(info)
        super().pushConsoleInfo(info)

    def pushWarning(self, warning: str) -> None:
        self.warnings.append(warning)
        self.log.append(warning)
        super().pushWarning(warning)

    def reportError(self, error: str, fatalError: bool = False) -> None:
        self.log.append(error)
        super().reportError(error, fatalError)


class MessageTab:
    """What reaches a tab of QGIS's Log Messages panel while it is open."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.messages: list[str] = []

    def __enter__(self) -> MessageTab:
        QgsApplication.messageLog().messageReceived.connect(self._received)
        return self

    def __exit__(self, *exc: object) -> None:
        QgsApplication.messageLog().messageReceived.disconnect(self._received)

    def _received(self, message: str, tag: str, _level: object) -> None:
        if tag == self.tag:
            self.messages.append(message)


def core_children(command: str = "detect") -> list[int]:
    """Pids of running kdmsi-geo ``command`` processes started by this test process (Linux)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if (int(fields["PPid"]) == os.getpid() and f" {command} " in cmdline
                and fields["State"][0] != "Z"):
            pids.append(int(entry.name))
    return pids


def drawn_layer(pair: dict[str, str], field: str = "is_change") -> QgsVectorLayer:
    """A scratch (memory) layer as a user draws it: boxes around changes, unchanged squares,
    with the changed flag in a field named as the user likes."""
    areas = make_data("labels", pair["mask"])["areas"]
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633", "drawn areas", "memory")
    layer.dataProvider().addAttributes([QgsField(field, QVariant.Int)])
    layer.updateFields()
    features = []
    for wkt, changed in areas:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        feature.setAttribute(field, changed)
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    return layer
