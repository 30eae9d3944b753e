"""SIGINT, SIGTERM and SIGHUP stop every command the same way, at every stage.

Each raises :class:`~kdmsi_core.errors.Cancelled` in the main thread (where Python runs
signal handlers), so the same clean-up runs as for an error, and the command ends with one
sentence and the shell's code for that signal (128 + its number: 130, 143, 129). While the
outputs are being moved into place the signal waits (:func:`uninterrupted`), so a run ends
either with all its outputs in place or with the old ones untouched, and the sentence says
which.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kdmsi_core.errors import Cancelled

HANDLED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, n))


class _State:
    """Whether a signal must wait, the first one that did, and whether outputs are in place."""

    deferring = False
    pending: int | None = None
    committed = False


def stopped(signum: int) -> Cancelled:
    """The error a signal raises, its exit code the shell's for that signal."""
    name = signal.Signals(signum).name
    if _State.committed:
        text = (f"The run was stopped by {name} after its outputs were complete; they are "
                "in place.")
    else:
        text = (f"The run was stopped by {name}; no outputs were written and existing files "
                "are unchanged.")
    error = Cancelled(text)
    error.exit_code = 128 + signum
    return error


def _handler(signum: int, _frame: object) -> None:
    if _State.deferring:
        _State.pending = _State.pending or signum
        return
    raise stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the handled signals into :class:`Cancelled` for the duration (main thread only;
    elsewhere Python cannot install handlers and the caller's own handling stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    if not any(h is _handler for h in previous.values()):  # the outermost run starts afresh
        _State.committed, _State.pending = False, None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold signals back while the block runs; one that came meanwhile is raised after it
    completes (a block that fails raises its own error instead)."""
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False
    pending, _State.pending = _State.pending, None
    if pending is not None:
        raise stopped(pending)


def ignore_after_run() -> None:
    """For a program whose run has ended: ignore the handled signals while the interpreter
    shuts down (its shutdown restores the default actions, which would kill the process
    without a word after its work was done and reported)."""
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)


def outputs_committed() -> None:
    """Record that the outputs are in place, so that a later signal says so."""
    _State.committed = True
