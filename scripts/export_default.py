"""Regenerate the embedded default model's ONNX twin from its checkpoint.

Run after the default checkpoint changes (``tests/core/test_engine.py`` fails while the two
disagree):

    python scripts/export_default.py
"""

from __future__ import annotations

from kdmsi_core.checkpoint import default_model_path
from kdmsi_core.engine import default_onnx_path
from kdmsi_core.export import export_onnx


def main() -> None:
    path = export_onnx(default_model_path(), default_onnx_path(), overwrite=True)
    print(f"Wrote {path} from {default_model_path().name}.")


if __name__ == "__main__":
    main()
