"""Evaluation scales tiles by the rule detection uses: a 16-bit or float copy of an 8-bit
tile set gives exactly the figures of the original."""

import shutil

from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset
from tests.train.data.toy import retype


def test_uint16_and_float_copies_evaluate_like_the_original(tmp_path):
    original = write_tile_dataset(tmp_path / "u8", seed=7, scenes=4, scene_size=256,
                                  tile_size=128, geotiffs=False, splits=(0.5, 0, 0.5))
    figures = {}
    for name, dtype in (("u16", "uint16"), ("f32", "float32")):
        copy = tmp_path / name
        shutil.copytree(original, copy)
        retype(copy, dtype)
        figures[name] = evaluate(copy, None, "test")["methods"]["msi"]
    base = evaluate(original, None, "test")["methods"]["msi"]
    assert base["tp"] > 0  # the embedded model finds change here
    for got in figures.values():
        assert {k: got[k] for k in ("tp", "fp", "fn")} == {k: base[k] for k in ("tp", "fp", "fn")}
    # A genuinely 16-bit range is stretched onto the percentiles of the model's training
    # data, not saturated nor onto 0..1 (which flagged twice as many unchanged pixels here):
    # the figures stay close.
    wide = tmp_path / "wide"
    shutil.copytree(original, wide)
    retype(wide, "uint16", 16.0, 100.0)
    stretched = evaluate(wide, None, "test")["methods"]["msi"]
    assert stretched["f1"] > 0.95 * base["f1"]
    assert stretched["fp"] < 1.5 * base["fp"]
