import torch
import torch.nn.functional as F

from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.msi import msi, scale_probabilities


def _reference(model, t1, t2, scales):
    """The per-image loop as the paper describes it, for comparison."""
    maps = []
    for i in range(t1.shape[0]):
        a, b = t1[i:i + 1], t2[i:i + 1]
        h, w = a.shape[-2:]
        total = 0
        for s in scales:
            size = (round(h * s), round(w * s))
            ra = F.interpolate(a, size=size, mode="bicubic", align_corners=False)
            rb = F.interpolate(b, size=size, mode="bicubic", align_corners=False)
            p = torch.sigmoid(model(ra, rb))
            pf = torch.sigmoid(model(ra.flip(-1), rb.flip(-1))).flip(-1)
            ps = (p + pf) / 2
            total = total + F.interpolate(ps, size=(h, w), mode="bilinear", align_corners=False)
        maps.append(total / len(scales))
    return torch.cat(maps)


def test_batched_msi_equals_per_image_loop():
    torch.manual_seed(0)
    model = SiameseCAM(NetworkConfig()).eval()
    t1, t2 = torch.randn(3, 3, 48, 64), torch.randn(3, 3, 48, 64)
    scales = (0.5, 1.0, 1.25, 2.0)
    with torch.inference_mode():
        ours = msi(model, t1, t2, scales)
        ref = _reference(model, t1, t2, scales)
    assert ours.shape == (3, 1, 48, 64)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ours.min() >= 0 and ours.max() <= 1


def test_flip_makes_map_flip_equivariant():
    torch.manual_seed(1)
    model = SiameseCAM(NetworkConfig()).eval()
    t1, t2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        p = scale_probabilities(model, t1, t2, 1.0)
        q = scale_probabilities(model, t1.flip(-1), t2.flip(-1), 1.0)
    assert torch.allclose(p, q.flip(-1), atol=1e-5)
