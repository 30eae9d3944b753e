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
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence

from qgis.core import QgsProcessingException, QgsProcessingFeedback

EXECUTABLE_SETTING = "KDMSI_GEO_EXECUTABLE"
EXECUTABLE_ENV = "KDMSI_GEO_EXECUTABLE"
EXECUTABLE_NAME = "kdmsi-geo"

INSTALL_HINT = (
    "Install it into a Python environment of its own "
    "(python3 -m venv kdmsi-env, then kdmsi-env/bin/pip install kdmsi-geo; "
    "on Windows kdmsi-env\\Scripts\\pip install kdmsi-geo) and set "
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


def run_core(command: Sequence[str], feedback: QgsProcessingFeedback) -> dict:
    """Run one ``kdmsi-geo ... --progress json`` call; return the summary of its last line.

    Raises :class:`QgsProcessingException` with the core's own ``Error:`` sentence when it
    fails, and after terminating it when ``feedback`` is cancelled.
    """
    posix = os.name == "posix"
    try:
        process = _start(command, posix)
    except OSError as exc:
        raise QgsProcessingException(
            f"{command[0]} could not be started ({exc.strerror or exc}). {INSTALL_HINT}"
        ) from exc
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    pumps = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
    ]
    for pump in pumps:
        pump.start()

    progress = _ProgressMapper(feedback)
    errors: list[str] = []
    open_streams = len(pumps)
    try:
        while open_streams:
            if feedback.isCanceled():
                _terminate(process)
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
                feedback.pushConsoleInfo(line.rstrip("\n"))
        returncode = process.wait()
    finally:
        if process.poll() is None:
            _terminate(process)
        for pump in pumps:
            pump.join(timeout=1.0)

    if returncode != 0:
        raise QgsProcessingException(_failure_message(returncode, errors))
    if progress.summary is None:
        raise QgsProcessingException(
            "kdmsi-geo finished without reporting its outputs; it may be older than this "
            "plugin: update it (pip install --upgrade kdmsi-geo)."
        )
    return progress.summary


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


class _ProgressMapper:
    """Turns the core's JSON progress lines into progress, progress text and log lines."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self.summary: dict | None = None
        self._stage: str | None = None

    def line(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            self.feedback.pushConsoleInfo(text)
            return
        if not isinstance(record, dict):
            self.feedback.pushConsoleInfo(text)
            return
        stage = str(record.get("stage", ""))
        done, total = int(record.get("done", 0)), int(record.get("total", 0))
        message = str(record.get("message", ""))
        if stage == "done" and "summary" in record:
            self.summary = record["summary"]
            self.feedback.setProgress(100.0)
            if message:
                self.feedback.pushInfo(message)
            return
        if stage != self._stage:
            self._stage = stage
            self.feedback.pushInfo(f"{stage}: {message}" if message else stage)
        if total > 0:
            self.feedback.setProgress(100.0 * min(done, total) / total)
        self.feedback.setProgressText(f"{stage} {done}/{total}" if total else stage)


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
