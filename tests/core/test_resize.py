"""The numpy resizing and MSI that ONNX Runtime runs with give torch's results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.msi import msi
from kdmsi_core.resize import resize


@pytest.mark.parametrize(("shape", "size", "mode"), [
    ((2, 3, 64, 64), (32, 32), "bicubic"),     # MSI's 0.5
    ((2, 3, 64, 64), (80, 80), "bicubic"),     # 1.25
    ((1, 3, 64, 48), (128, 96), "bicubic"),    # 2
    ((1, 2, 37, 23), (5, 61), "bicubic"),      # odd sizes, shrink one axis, grow the other
    ((4, 1, 4, 4), (64, 64), "bilinear"),      # logits at output stride 16 to the tile
    ((2, 1, 7, 9), (40, 3), "bilinear"),
])
def test_resize_matches_torch_interpolate(shape, size, mode) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=size, mode=mode,
                             align_corners=False).numpy()
    ours = resize(x, size, mode)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 1e-5


def test_msi_on_numpy_arrays_equals_msi_on_tensors() -> None:
    torch.manual_seed(3)
    model = SiameseCAM(NetworkConfig()).eval()
    rng = np.random.default_rng(3)
    t1, t2 = (rng.standard_normal((2, 3, 48, 64)).astype(np.float32) for _ in range(2))

    def numpy_network(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(a.copy()), torch.from_numpy(b.copy())).numpy()

    scales = (0.5, 1.0, 1.25, 2.0)
    ours = msi(numpy_network, t1, t2, scales)
    with torch.inference_mode():
        expected = msi(model, torch.from_numpy(t1), torch.from_numpy(t2), scales).numpy()
    assert isinstance(ours, np.ndarray) and ours.shape == (2, 1, 48, 64)
    assert np.abs(ours - expected).max() < 1e-5
