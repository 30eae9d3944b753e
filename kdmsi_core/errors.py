"""One exception hierarchy for everything a user can get wrong.

Each message is a single sentence that says what is wrong and what to do; the
CLI prints it without a traceback and maps the class to an exit code.
"""


class KdmsiError(Exception):
    """Base class of every error the user can act on."""

    exit_code = 1


class InputError(KdmsiError):
    """An input raster, vector layer or data folder is missing, unreadable or unusable."""

    exit_code = 2


class DataError(InputError):
    """A training or evaluation data set does not follow the expected layout."""


class CheckpointError(KdmsiError):
    """A model file is not a kdmsi checkpoint or does not match the network."""

    exit_code = 3


class OutputError(KdmsiError):
    """An output cannot be written (exists, bad path, bad extension)."""

    exit_code = 4


class ParameterError(KdmsiError):
    """An option value is out of range or inconsistent with another one."""

    exit_code = 2


class Cancelled(KdmsiError):
    """The run was cancelled through the progress callback or by a signal."""

    exit_code = 130
