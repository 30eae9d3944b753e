"""The one small interface through which long jobs report progress and learn of cancellation.

A job calls ``progress.update(stage, done, total, message)``; the callback may raise
:class:`~kdmsi_core.errors.Cancelled` (or return ``False`` from ``is_cancelled``) to stop
the job at the next batch. The CLI renders it as a bar or JSON lines; QGIS maps it onto
``QgsProcessingFeedback``.
"""

from __future__ import annotations

import json
import sys
from typing import Protocol, TextIO

from kdmsi_core.errors import Cancelled


class Progress(Protocol):
    """What a long-running job reports to."""

    def update(self, stage: str, done: int, total: int, message: str = "") -> None: ...

    def is_cancelled(self) -> bool: ...


class NullProgress:
    """Reports nothing and never cancels."""

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        pass

    def is_cancelled(self) -> bool:
        return False


class JsonLinesProgress:
    """One JSON object per line: ``{"stage", "done", "total", "message"}``, for programs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        self._write({"stage": stage, "done": int(done), "total": int(total), "message": message})

    def finish(self, message: str, summary: dict) -> None:
        """The last line of a successful run: stage ``done`` with the run's ``summary``."""
        self._write({"stage": "done", "done": 1, "total": 1, "message": message,
                     "summary": summary})

    def _write(self, record: dict) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def is_cancelled(self) -> bool:
        return False


class BarProgress:
    """A tqdm bar per stage on stderr, for people."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None
        self._stage: str | None = None

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, file=self.stream, leave=False,
                             dynamic_ncols=True)
        bar = self._bar
        if bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    def finish(self, message: str, summary: dict) -> None:
        """Close the bar and tell the person what was written."""
        self.close()
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def is_cancelled(self) -> bool:
        return False


def report_done(progress: Progress, message: str, summary: dict) -> None:
    """End a successful run: renderers with a ``finish`` method get the summary, the others
    (any object following :class:`Progress`) a last ``done`` update."""
    finish = getattr(progress, "finish", None)
    if finish is not None:
        finish(message, summary)
    else:
        progress.update("done", 1, 1, message)


def check_cancelled(progress: Progress) -> None:
    """Raise :class:`Cancelled` when the callback asks the job to stop."""
    if progress.is_cancelled():
        raise Cancelled("The run was cancelled; no outputs were written.")


def make_progress(kind: str) -> Progress:
    """Progress renderer for the CLI's ``--progress bar|json|none``."""
    if kind == "json":
        return JsonLinesProgress()
    if kind == "bar":
        return BarProgress()
    return NullProgress()
