"""Optimiser, parameter groups and the poly learning-rate schedule of the KD-MSI recipe.

The official code passed weight decay where SGD expects momentum (so momentum was 1e-4);
here SGD gets real Nesterov momentum 0.9. Parameter groups follow the paper: pretrained
weights x1, their biases x2, new weights x10, new biases x20. A network trained from
scratch has no pretrained part, so every backbone tensor counts as new; one fine-tuned from
a checkpoint has no new part. AdamW gives pretrained tensors a tenth of the base rate, so
fine-tuning refines a good start instead of destroying it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

MULTIPLIERS = {"pretrained_weight": 1.0, "pretrained_bias": 2.0, "new_weight": 10.0,
               "new_bias": 20.0}
ADAMW_PRETRAINED = 0.1


def parameter_groups(networks: Iterable[nn.Module], pretrained: bool,
                     finetune: bool = False) -> dict[str, list]:
    """Split parameters into the four groups; ``backbone.*`` is pretrained when weights were
    loaded, the CAM head is new unless the whole network came from a checkpoint
    (``finetune``)."""
    groups: dict[str, list] = {k: [] for k in MULTIPLIERS}
    for net in networks:
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            known = finetune or (pretrained and name.startswith("backbone."))
            origin = "pretrained" if known else "new"
            kind = "weight" if name.endswith("weight") and p.ndim > 1 else "bias"
            groups[f"{origin}_{kind}"].append(p)
    return {k: v for k, v in groups.items() if v}


def make_optimizer(networks: Iterable[nn.Module], name: str, lr: float, weight_decay: float,
                   pretrained: bool, momentum: float = 0.9,
                   finetune: bool = False) -> torch.optim.Optimizer:
    """SGD (paper recipe, fixed) or AdamW; both with the same parameter groups.

    AdamW adapts per-parameter step sizes itself, so its groups get the base rate, pretrained
    ones a tenth of it, and only the decay differs otherwise (none on biases and norms).
    """
    groups = parameter_groups(networks, pretrained, finetune)
    if name == "sgd":
        params = [{"params": ps, "lr": lr * MULTIPLIERS[k], "initial_lr": lr * MULTIPLIERS[k]}
                  for k, ps in groups.items()]
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    if name == "adamw":
        rates = {k: lr * (ADAMW_PRETRAINED if k.startswith("pretrained") else 1.0)
                 for k in groups}
        params = [{"params": ps, "lr": rates[k], "initial_lr": rates[k],
                   "weight_decay": weight_decay if k.endswith("weight") else 0.0}
                  for k, ps in groups.items()]
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adamw")


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int,
            power: float = 0.9, warmup: int = 0) -> None:
    """Set every group's rate to ``initial * (1 - step / total) ** power``, after a linear
    warm-up over the first ``warmup`` steps (a fresh optimiser's first steps are the least
    reliable, and a pretrained start is easily knocked off by them)."""
    factor = (1 - min(step, total_steps) / max(1, total_steps)) ** power
    if step < warmup:
        factor *= (step + 1) / (warmup + 1)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
