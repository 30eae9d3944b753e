"""Evaluation scales tiles by the rule detection uses: a 16-bit or float copy of an 8-bit
tile set gives exactly the figures of the original."""

import shutil
import warnings

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset


def _retype(root, dtype: str, scale: float = 1.0, offset: float = 0.0) -> None:
    for sub in ("A", "B"):
        for path in (root / sub).iterdir():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    data = src.read().astype(np.float64) * scale + offset
                path.unlink()
                tif = path.with_suffix(".tif")
                with rasterio.open(tif, "w", driver="GTiff", width=data.shape[2],
                                   height=data.shape[1], count=data.shape[0],
                                   dtype=dtype) as dst:
                    dst.write(data.astype(dtype))
                tif.rename(path)  # keep the listed name; rasterio reads by content


def test_uint16_and_float_copies_evaluate_like_the_original(tmp_path):
    original = write_tile_dataset(tmp_path / "u8", seed=7, scenes=4, scene_size=256,
                                  tile_size=128, geotiffs=False, splits=(0.5, 0, 0.5))
    figures = {}
    for name, dtype in (("u16", "uint16"), ("f32", "float32")):
        copy = tmp_path / name
        shutil.copytree(original, copy)
        _retype(copy, dtype)
        figures[name] = evaluate(copy, None, "test")["methods"]["msi"]
    base = evaluate(original, None, "test")["methods"]["msi"]
    assert base["tp"] > 0  # the embedded model finds change here
    for got in figures.values():
        assert {k: got[k] for k in ("tp", "fp", "fn")} == {k: base[k] for k in ("tp", "fp", "fn")}
    # A genuinely 16-bit range is stretched, not saturated: the figures stay close.
    wide = tmp_path / "wide"
    shutil.copytree(original, wide)
    _retype(wide, "uint16", 16.0, 100.0)
    stretched = evaluate(wide, None, "test")["methods"]["msi"]
    assert stretched["f1"] > 0.7 * base["f1"]
