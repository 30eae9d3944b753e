import numpy as np
import torch

from kdmsi_core.normalize import Normalization


def test_uint8_rule_of_the_paper():
    n = Normalization.for_dtype("uint8", 3)
    x = torch.tensor([0.0, 127.5, 255.0]).view(3, 1, 1).repeat(1, 2, 2)
    out = n.apply(x)
    assert torch.allclose(out[:, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_range_clips_and_roundtrips_dict():
    n = Normalization.for_dtype("uint8", 2).with_range((100.0, 0.0), (1100.0, 4095.0))
    x = torch.from_numpy(np.array([[[50.0]], [[4095.0]]], dtype=np.float32))
    assert torch.allclose(n.apply(x).flatten(), torch.tensor([-1.0, 1.0]))
    assert Normalization.from_dict(n.to_dict()) == n
    assert Normalization.for_dtype("uint16", 1).high == (65535.0,)
