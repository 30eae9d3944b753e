"""Find the ``kdmsi-geo`` command and run it as a separate process for Processing.

The core needs torch, which does not belong in QGIS's own Python, so the plugin only
builds a command line, streams the command's ``--progress json`` lines onto a
:class:`QgsProcessingFeedback`, and terminates the process when the user cancels.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMessageLog,
    QgsProcessingException,
    QgsProcessingFeedback,
)

EXECUTABLE_SETTING = "KDMSI_GEO_EXECUTABLE"
EXECUTABLE_ENV = "KDMSI_GEO_EXECUTABLE"
EXECUTABLE_NAME = "kdmsi-geo"
LOG_TAG = "KD-MSI"

INSTALL_HINT = (
    "Install it into a Python environment of its own "
    "(python3 -m venv kdmsi-env, then kdmsi-env/bin/pip install 'kdmsi-geo[onnx]' to "
    "detect changes without PyTorch, or 'kdmsi-geo[onnx,torch]' to train models too; "
    "on Windows kdmsi-env\\Scripts\\pip) and set "
    "Processing > Options > Providers > KD-MSI change detection > "
    "'kdmsi-geo executable' to kdmsi-env/bin/kdmsi-geo (kdmsi-env\\Scripts\\kdmsi-geo.exe), "
    f"or set the environment variable {EXECUTABLE_ENV} to that file, "
    "or put its folder on the PATH."
)

# Variables that QGIS sets for its own Python, PROJ and GDAL; handed on, they make the
# core's Python or its rasterio wheel load QGIS's copies instead of its own.
_FOREIGN_ENV = ("PYTHONHOME", "PYTHONPATH", "PROJ_DATA", "PROJ_LIB", "GDAL_DATA",
                "GDAL_DRIVER_PATH")
# How long a cancelled core may take to delete its temporaries before it is killed.
_TERMINATE_GRACE_S = 5.0
_POLL_S = 0.1
# Reading a model card imports PyTorch: seconds, not minutes.
_QUERY_TIMEOUT_S = 120
CANCELLED = "Cancelled: kdmsi-geo was stopped and wrote no outputs."


def find_executable(configured: str | None) -> str:
    """The ``kdmsi-geo`` to run: the Processing setting, else the environment, else PATH.

    A candidate that is set but not an executable file is skipped and named in the error,
    so a stale setting does not hide a working installation further down the list.
    """
    candidates = (
        ("the Processing option 'kdmsi-geo executable'", configured),
        (f"the environment variable {EXECUTABLE_ENV}", os.environ.get(EXECUTABLE_ENV)),
        ("the PATH", EXECUTABLE_NAME),
    )
    tried = []
    for origin, value in candidates:
        if not value:
            continue
        found = shutil.which(value)
        if found:
            return found
        tried.append(origin if value == EXECUTABLE_NAME else f"{origin} ({value})")
    raise QgsProcessingException(
        f"The kdmsi-geo command was not found (looked at {', '.join(tried)}). {INSTALL_HINT}"
    )


def core_environment() -> dict[str, str]:
    """QGIS's environment without what would make the core load QGIS's libraries."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_core(command: Sequence[str], feedback: QgsProcessingFeedback, stages: Stages,
             log: RunLog, wording: dict[str, str] | None = None) -> dict:
    """Run one ``kdmsi-geo ... --progress json`` call; return the summary of its last line.

    Progress goes onto one monotonic bar weighted by ``stages``; text appears before the
    core has printed anything. Raises :class:`QgsProcessingException` with the core's own
    ``Error:`` sentence (logged once, not echoed) when it fails, and after terminating it
    when ``feedback`` is cancelled. ``wording`` replaces the core's option names in its
    messages by the parameters' names, e.g. ``--bands`` by ``BANDS``.
    """
    posix = os.name == "posix"
    log.command(command)
    progress = _ProgressMapper(feedback, stages, log)
    progress.starting()
    try:
        process = _start(command, posix)
    except OSError as exc:
        message = f"{command[0]} could not be started ({exc.strerror or exc}). {INSTALL_HINT}"
        log.error(message)
        raise QgsProcessingException(message) from exc
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    pumps = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
    ]
    for pump in pumps:
        pump.start()

    errors: list[str] = []
    open_streams = len(pumps)
    try:
        while open_streams:
            if feedback.isCanceled():
                _terminate(process)
                log.error(CANCELLED)
                raise QgsProcessingException(CANCELLED)
            try:
                name, line = lines.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
            elif name == "stdout":
                progress.line(line)
            else:
                errors.append(line.rstrip("\n"))
                if not line.startswith("Error: "):
                    log.console(line.rstrip("\n"))
        returncode = process.wait()
    finally:
        if process.poll() is None:
            _terminate(process)
        for pump in pumps:
            pump.join(timeout=1.0)

    if returncode != 0:
        message = _failure_message(returncode, errors)
        for option, parameter in (wording or {}).items():
            message = re.sub(rf"{re.escape(option)}\b", parameter, message)
        log.error(message)
        raise QgsProcessingException(message)
    if progress.summary is None:
        message = ("kdmsi-geo finished without reporting its outputs; it may be older than this "
                   "plugin: update it (pip install --upgrade kdmsi-geo).")
        log.error(message)
        raise QgsProcessingException(message)
    return progress.summary


def read_json(command: Sequence[str], feedback: QgsProcessingFeedback | None = None) -> dict:
    """Run a short ``kdmsi-geo`` query that prints one JSON object (e.g. ``info --json``);
    cancelling ``feedback`` stops it like a long run."""
    try:
        process = _start(command, os.name == "posix")
    except OSError as exc:
        raise QgsProcessingException(
            f"{command[0]} could not be started ({exc.strerror or exc}). {INSTALL_HINT}"
        ) from exc
    deadline = time.monotonic() + _QUERY_TIMEOUT_S
    while True:
        try:
            stdout, stderr = process.communicate(timeout=_POLL_S)
            break
        except subprocess.TimeoutExpired:  # retrying loses no output
            if feedback is not None and feedback.isCanceled():
                _terminate(process)
                raise QgsProcessingException(CANCELLED) from None
            if time.monotonic() > deadline:
                _terminate(process)
                raise QgsProcessingException(
                    f"{shlex.join(command)} gave no answer within {_QUERY_TIMEOUT_S} s; check "
                    "that kdmsi-geo runs from a terminal.") from None
    if process.returncode != 0:
        raise QgsProcessingException(_failure_message(process.returncode,
                                                      stderr.splitlines()))
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise QgsProcessingException(
            f"{shlex.join(command)} did not print JSON; it may be older than this plugin: "
            "update it (pip install --upgrade kdmsi-geo).") from None


def _start(command: Sequence[str], posix: bool) -> subprocess.Popen:
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=core_environment(),
        # Its own process group: signals meant for QGIS do not reach it, and cancelling
        # can stop any helpers it started together with it.
        start_new_session=posix,
        creationflags=0 if posix else subprocess.CREATE_NO_WINDOW,
    )


@dataclass(frozen=True)
class Stage:
    """A stage of a core run: its name (a regular expression; a repeated stage such as
    ``epoch 3/10`` captures its index and count), its share of the bar, and its label."""

    pattern: str
    weight: float
    label: str


class Stages:
    """Where a stage update puts the one bar: stages fill consecutive weighted spans.

    ``starting`` is the text shown while the core starts, before its first line.
    """

    def __init__(self, stages: Sequence[Stage], starting: str) -> None:
        self.starting = starting
        total = sum(s.weight for s in stages)
        self._spans: list[tuple[re.Pattern[str], float, float, str]] = []
        start = 0.0
        for stage in stages:
            share = 100.0 * stage.weight / total
            self._spans.append((re.compile(stage.pattern), start, share, stage.label))
            start += share

    def locate(self, stage: str, done: int, total: int) -> tuple[str, float] | None:
        """(label, percent of the whole run) for an update, or None for an unknown stage."""
        for pattern, start, share, label in self._spans:
            match = pattern.fullmatch(stage)
            if match is None:
                continue
            fraction = min(done, total) / total if total > 0 else 0.0
            repeat = [int(g) for g in match.groups() if g is not None]
            if len(repeat) == 2:
                index, count = repeat
                fraction = (index - 1 + fraction) / max(count, 1)
            return label, start + share * min(max(fraction, 0.0), 1.0)
        return None


class RunLog:
    """Where a run's messages go: the Processing log and the "KD-MSI" Log Messages tab.

    Identical console lines are written once: a warning repeated per tile says nothing new.
    """

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self._seen: set[str] = set()

    def command(self, command: Sequence[str]) -> None:
        text = shlex.join(command)
        self.feedback.pushCommandInfo(text)
        _message_log(text, Qgis.Info)

    def text(self, text: str) -> None:
        """Progress text: Processing's dialog also writes it to its log, so it is rationed."""
        self.feedback.setProgressText(text)
        _message_log(text, Qgis.Info)

    def info(self, text: str) -> None:
        self.feedback.pushInfo(text)
        _message_log(text, Qgis.Info)

    def warning(self, text: str) -> None:
        self.feedback.pushWarning(text)
        _message_log(text, Qgis.Warning)

    def console(self, text: str) -> None:
        if text.strip() and text not in self._seen:
            self._seen.add(text)
            self.feedback.pushConsoleInfo(text)
            _message_log(text, Qgis.Info)

    def error(self, text: str) -> None:
        """Only the message tab: Processing reports the exception that follows itself."""
        _message_log(text, Qgis.Critical)


def _message_log(text: str, level: Qgis.MessageLevel) -> None:
    """The "KD-MSI" tab; qgis_process has no panel and would print everything twice."""
    if QgsApplication.instance().platform() != "qgis_process":
        QgsMessageLog.logMessage(text, LOG_TAG, level, notifyUser=level == Qgis.Critical)


class _ProgressMapper:
    """Turns the core's JSON progress lines into one monotonic bar and a rationed log.

    The bar never moves back; the text (and so the dialog's log) changes once per stage and
    at most once per tenth of the run.
    """

    def __init__(self, feedback: QgsProcessingFeedback, stages: Stages, log: RunLog) -> None:
        self.feedback = feedback
        self.stages = stages
        self.log = log
        self.summary: dict | None = None
        self._label: str | None = None
        self._percent = 0.0
        self._tenth = 0

    def starting(self) -> None:
        """Text before the core prints anything: starting it takes seconds."""
        self.feedback.setProgress(self._percent)
        self.log.text(self.stages.starting)

    def line(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            self.log.console(text)
            return
        if not isinstance(record, dict):
            self.log.console(text)
            return
        stage = str(record.get("stage", ""))
        done, total = int(record.get("done", 0)), int(record.get("total", 0))
        message = str(record.get("message", ""))
        if stage == "done" and "summary" in record:
            self.summary = record["summary"]
            self._advance(100.0)
            if message:
                self.log.info(message)
            return
        located = self.stages.locate(stage, done, total)
        label, percent = located if located else (stage, self._percent)
        if label != self._label:
            self._label = label
            self._advance(percent)
            self._tenth = int(self._percent // 10)
            self.log.text(f"{label}: {message}" if message else label)
            return
        self._advance(percent)
        if int(self._percent // 10) > self._tenth:
            self._tenth = int(self._percent // 10)
            detail = f" ({message})" if message else ""
            self.log.text(f"{self._percent:.0f} % – {label}{detail}")

    def _advance(self, percent: float) -> None:
        if percent > self._percent:
            self._percent = percent
            self.feedback.setProgress(percent)


def _pump(stream, name: str, lines: queue.Queue) -> None:
    """Copy a pipe into the queue line by line; ``None`` marks its end."""
    for line in stream:
        lines.put((name, line))
    stream.close()
    lines.put((name, None))


def _terminate(process: subprocess.Popen) -> None:
    """Ask the core to stop (it deletes its temporaries on SIGTERM); kill it if it hangs."""
    if process.poll() is not None:
        return
    if os.name == "posix":
        _signal_group(process, signal.SIGTERM)
    else:
        process.terminate()
    try:
        process.wait(timeout=_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        if os.name == "posix":
            _signal_group(process, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _failure_message(returncode: int, stderr: list[str]) -> str:
    """The core's ``Error: <sentence>`` verbatim, or the end of its output if it crashed."""
    for line in reversed(stderr):
        if line.startswith("Error: "):
            return line[len("Error: "):]
    tail = " | ".join(line for line in stderr[-3:] if line.strip()) or "no message"
    return f"kdmsi-geo stopped with exit code {returncode} without an error message ({tail})."
