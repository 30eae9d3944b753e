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


def test_one_scaling_rule_for_any_type_of_the_same_values():
    from kdmsi_core.normalize import data_range, for_data

    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (3, 1000)).astype(np.float64)
    card = Normalization.for_dtype("uint8", 3)
    # uint16 and float copies of 8-bit data scale exactly like the 8-bit original
    assert for_data(card, eight.astype(np.uint16).astype(np.float64)) == card
    assert data_range(eight) == ((0.0,) * 3, (255.0,) * 3)
    sixteen = eight * 40 + 1000
    low, high = data_range(sixteen)
    assert np.allclose(low, np.percentile(sixteen, 2, axis=1))
    assert np.allclose(high, np.percentile(sixteen, 98, axis=1))
    reflectance = eight / 255.0  # float 0..1: not 8-bit-like, stretched
    assert data_range(reflectance)[1][0] < 1.0
    with_nan = sixteen.copy()
    with_nan[:, :10] = np.nan
    assert np.allclose(data_range(with_nan)[0], np.percentile(sixteen[:, 10:], 2, axis=1))
    trained_on_16_bit = card.with_range((100.0,) * 3, (4000.0,) * 3)
    assert for_data(trained_on_16_bit, eight) == trained_on_16_bit  # its own range, as is
