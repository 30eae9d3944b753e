"""A small, easy tile data set for exercising training end to end in seconds.

Textured ground seen twice with a different gain, offset and noise per date (pseudo-change),
and in half of the pairs one to three new or removed rectangular "buildings" with a cast
shadow (true change, in the mask). Realistic scenes come from ``kdmsi_train.synth``; this
set only has to be learnable within a test's time budget.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning


def write_png(path: Path, array: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=array.shape[2],
                           height=array.shape[1], count=array.shape[0], dtype="uint8") as ds:
            ds.write(array)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (3, size // 8 + 1, size // 8 + 1)).repeat(8, 1).repeat(8, 2)
    base = rng.uniform(70, 140, (3, 1, 1))
    return base + 12 * coarse[:, :size, :size] + rng.normal(0, 6, (3, size, size))


def write_toy_tiles(root: Path, tiles: int = 480, size: int = 64, seed: int = 0,
                    splits: tuple[float, float] = (0.7, 0.85)) -> Path:
    """Write ``A/ B/ label/ list/`` with train/val/test splits; returns ``root``."""
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label", "list"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(tiles):
        ground = _ground(rng, size)
        before, after = ground.copy(), ground.copy()
        mask = np.zeros((size, size), np.uint8)
        changed = rng.random() < 0.5
        for _ in range(rng.integers(1, 4) if changed else 0):
            h, w = rng.integers(size // 6, size // 3, 2)
            r, c = rng.integers(2, size - h - 4), rng.integers(2, size - w - 4)
            target = after if rng.random() < 0.5 else before
            target[:, r + 3:r + h + 3, c + 3:c + w + 3] *= 0.5
            target[:, r:r + h, c:c + w] = rng.uniform(120, 240, (3, 1, 1))
            mask[r:r + h, c:c + w] = 255
        after = after * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15, (3, 1, 1))
        after += rng.normal(0, 5, after.shape)
        name = f"toy_{i:04d}.png"
        write_png(root / "A" / name, np.clip(before, 0, 255).astype(np.uint8))
        write_png(root / "B" / name, np.clip(after, 0, 255).astype(np.uint8))
        write_png(root / "label" / name, mask[None])
        split = ("train" if i < splits[0] * tiles else
                 "val" if i < splits[1] * tiles else "test")
        lists[split].append(f"{name},{int(mask.any())}")
    for split, lines in lists.items():
        (root / "list" / f"{split}.txt").write_text(
            "".join(line.split(",")[0] + "\n" for line in lines))
        (root / "list" / f"{split}_label.txt").write_text("".join(f"{line}\n" for line in lines))
    return root


def retype(root: Path, dtype: str, scale: float = 1.0, offset: float = 0.0) -> None:
    """Rewrite the A/ and B/ tiles of a tile folder in place as ``dtype`` GeoTIFFs holding
    ``value * scale + offset`` (under their listed names: rasterio reads by content)."""
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
                tif.rename(path)
