"""kdmsi-geo core: everything inference needs (never imports qgis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["DetectSummary", "__version__", "detect"]

if TYPE_CHECKING:
    from kdmsi_core.pipeline import DetectSummary, detect


def __getattr__(name: str) -> object:
    """``kdmsi_core.detect`` imports GDAL and its engine (ONNX Runtime or torch) only when
    first used, so that importing the package (e.g. for its version or errors) stays cheap."""
    if name in ("detect", "DetectSummary"):
        from kdmsi_core import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'kdmsi_core' has no attribute {name!r}")
