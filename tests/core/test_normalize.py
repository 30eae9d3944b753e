from dataclasses import replace

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


def test_sixteen_bit_data_are_stretched_onto_the_training_datas_percentiles():
    """With the reference of its training data, an 8-bit model sees a linear 16-bit copy of
    that data exactly as it saw the original; without one, the percentiles go to 0 and 1."""
    from kdmsi_core.normalize import for_data, own_reference, reference_range

    rng = np.random.default_rng(1)
    eight = np.clip(rng.normal([[80.0], [100.0], [120.0]], 25.0, (3, 5000)), 0, 255).round()
    sixteen = eight * 16 + 100
    reference = own_reference(eight)
    assert all(0 < lo < hi < 1 for lo, hi in zip(*reference, strict=True))
    card = Normalization.for_dtype("uint8", 3)
    seen = for_data(replace(card, reference=reference), sixteen)
    assert np.allclose(seen.low, 100.0) and np.allclose(seen.high, 100.0 + 16 * 255)
    assert np.allclose(seen.apply(sixteen[:, None]), card.apply(eight[:, None]), atol=1e-5)
    plain = for_data(card, sixteen)  # an older card: the plain stretch
    assert np.allclose(plain.low, np.percentile(sixteen, 2, axis=1))
    # a band the reference does not cover gets the plain stretch
    low, high = reference_range(np.vstack([sixteen, sixteen[:1]]), reference)
    assert np.isclose(low[3], plain.low[0]) and np.isclose(high[3], plain.high[0])
    assert Normalization.from_dict(seen.to_dict()) == seen
    assert "reference" not in card.to_dict()  # cards without one are written as before
