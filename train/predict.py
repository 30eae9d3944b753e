"""Change maps of a whole split, batched: student MSI, student single-scale, teacher CAM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdmsi_core.model import SiameseCAM
from kdmsi_core.msi import msi
from kdmsi_core.normalize import Normalization
from kdmsi_train.datasets import PairStore

METHODS = ("msi", "single", "teacher_cam")


def change_maps(network: SiameseCAM, t1: torch.Tensor, t2: torch.Tensor, method: str,
                scales: Sequence[float]) -> torch.Tensor:
    """(N, H, W) maps in [0, 1] for normalised inputs.

    ``single`` is the student's sigmoid at scale 1 without flips; ``teacher_cam`` is the
    classic max-normalised ReLU CAM, which has no absolute meaning across images.
    """
    if method == "msi":
        return msi(network, t1, t2, scales)[:, 0]
    logits = network(t1, t2)
    if method == "single":
        maps = torch.sigmoid(logits)
    elif method == "teacher_cam":
        cam = torch.relu(logits)
        maps = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    else:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return F.interpolate(maps, size=t1.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def to_tensor(x: np.ndarray, norm: Normalization, device: torch.device) -> torch.Tensor:
    """A raw (B, C, H, W) array as a normalised tensor on ``device``."""
    return norm.apply(torch.from_numpy(np.ascontiguousarray(x)).to(device))


def iter_batches(store: PairStore, norm: Normalization, device: torch.device,
                 batch_size: int = 16, indices: Sequence[int] | None = None
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (tile indices, normalised t1, normalised t2) over the split, in order."""
    order = np.arange(len(store)) if indices is None else np.asarray(indices)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        a, b = store.batch(idx)
        yield idx, to_tensor(a, norm, device), to_tensor(b, norm, device)


def iter_maps(network: SiameseCAM, store: PairStore, norm: Normalization, device: torch.device,
              method: str = "msi", scales: Sequence[float] = (1.0,), batch_size: int = 16,
              indices: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (tile indices, maps (B, H, W) float32) over the split, in order."""
    network.eval()
    with torch.inference_mode():
        for idx, t1, t2 in iter_batches(store, norm, device, batch_size, indices):
            yield idx, change_maps(network, t1, t2, method, scales).float().cpu().numpy()
