"""Choosing the torch device and CPU threads."""

from __future__ import annotations

import torch

from kdmsi_core.errors import ParameterError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is refused."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("--device cuda was asked for but no CUDA GPU is available; "
                             "use --device cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise ParameterError(f"Unknown device {name!r}; use auto, cpu or cuda.")
    return torch.device(name)
