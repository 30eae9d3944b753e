"""Choosing the torch device and CPU threads."""

from __future__ import annotations

import torch

from kdmsi_core.errors import ParameterError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is refused."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ParameterError(f"Unknown device {name!r}; use auto, cpu or cuda.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParameterError(f"--device {name} is not a device name; use auto, cpu, cuda or "
                             "cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"--device {name} was asked for but no CUDA GPU is "
                                 "available; use --device cpu or auto.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ParameterError(f"--device {name} names GPU {device.index} but this machine "
                                 f"has {count} (cuda:0 to cuda:{count - 1}); pick one of them.")
    return device
