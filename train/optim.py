"""Optimiser, parameter groups and the poly learning-rate schedule of the KD-MSI recipe.

The official code passed weight decay where SGD expects momentum (so momentum was 1e-4);
here SGD gets real Nesterov momentum 0.9. Parameter groups follow the paper: pretrained
weights x1, their biases x2, new weights x10, new biases x20. A network trained from
scratch has no pretrained part, so every backbone tensor counts as new.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

MULTIPLIERS = {"pretrained_weight": 1.0, "pretrained_bias": 2.0, "new_weight": 10.0,
               "new_bias": 20.0}


def parameter_groups(networks: Iterable[nn.Module], pretrained: bool) -> dict[str, list]:
    """Split parameters into the four groups; ``backbone.*`` is pretrained when weights were
    loaded, everything else (the CAM head) is always new."""
    groups: dict[str, list] = {k: [] for k in MULTIPLIERS}
    for net in networks:
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            origin = "pretrained" if pretrained and name.startswith("backbone.") else "new"
            kind = "weight" if name.endswith("weight") and p.ndim > 1 else "bias"
            groups[f"{origin}_{kind}"].append(p)
    return {k: v for k, v in groups.items() if v}


def make_optimizer(networks: Iterable[nn.Module], name: str, lr: float, weight_decay: float,
                   pretrained: bool, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (paper recipe, fixed) or AdamW; both with the same parameter groups.

    AdamW adapts per-parameter step sizes itself, so its groups all get the base rate and
    only the decay differs (none on biases and norms).
    """
    groups = parameter_groups(networks, pretrained)
    if name == "sgd":
        params = [{"params": ps, "lr": lr * MULTIPLIERS[k], "initial_lr": lr * MULTIPLIERS[k]}
                  for k, ps in groups.items()]
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    if name == "adamw":
        params = [{"params": ps, "lr": lr, "initial_lr": lr,
                   "weight_decay": weight_decay if k.endswith("weight") else 0.0}
                  for k, ps in groups.items()]
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adamw")


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int,
            power: float = 0.9) -> None:
    """Set every group's rate to ``initial * (1 - step / total) ** power``."""
    factor = (1 - min(step, total_steps) / max(1, total_steps)) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
