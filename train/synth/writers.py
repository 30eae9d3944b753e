"""Write scene pairs as georeferenced GeoTIFFs and as a WSCD-style tile data set.

Tile layout (as in the public weakly supervised change-detection sets)::

    tiles/A/<name>.png  tiles/B/<name>.png  tiles/label/<name>.png (0/255)
    tiles/list/{train,val,test}.txt         one file name per line
    tiles/list/{train,val,test}_label.txt   "<name>.png,0|1"

Scenes, not tiles, are split between train, val and test, so that no place is seen
both in training and in evaluation.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import tempfile
import warnings
from collections.abc import Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning
from rasterio.transform import Affine

from kdmsi_core.errors import OutputError, ParameterError
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import SYNTH_RECORD
from kdmsi_train.synth.scene import ScenePair, check_scene_args, make_scene_pair

DTYPES = ("uint8", "uint16")
BAND_NAMES = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "nir")}
SPLITS = ("train", "val", "test")
SCENE_GAP_M = 500.0  # scenes of one data set lie side by side, this far apart
SCENES_PER_ROW = 8
OUTPUTS = ("scenes", "tiles", SYNTH_RECORD)  # what a run writes into its folder
MAX_WORKERS = 4
PNG_ZLEVEL = 1  # fast; the tiles are rewritten far more often than they are archived


def write_scene_pair(
    pair: ScenePair,
    out_dir: str | os.PathLike,
    prefix: str,
    *,
    epsg: int = 32633,
    origin: tuple[float, float] | None = None,
    pixel_size: float = 0.5,
    dtype: str = "uint8",
    bands: int = 3,
) -> dict[str, Path]:
    """Write ``<prefix>_t1.tif``, ``<prefix>_t2.tif`` and ``<prefix>_mask.tif`` (0/255).

    ``origin`` is the upper-left corner in the CRS; by default a point near the centre
    of the CRS's area of use, so the files land somewhere plausible on a map. ``bands`` 4
    adds a near-infrared band (see :func:`with_nir`).
    """
    crs = projected_crs(epsg)
    _check_dtype(dtype)
    _check_bands(bands)
    check_scene_args(pair.shape, pixel_size)
    x0, y0 = origin if origin is not None else default_origin(epsg)
    transform = Affine(pixel_size, 0.0, x0, 0.0, -pixel_size, y0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / f"{prefix}_{key}.tif" for key in ("t1", "t2", "mask")}
    tags = {"KDMSI_SYNTH_STYLE": pair.style}
    for key in ("t1", "t2"):
        _write_geotiff(paths[key], as_image(getattr(pair, key), dtype, bands), crs, transform,
                       tags, BAND_NAMES[bands])
    _write_geotiff(paths["mask"], (pair.mask[None] * 255).astype(np.uint8), crs, transform,
                   tags, ("change",))
    return paths


def write_tile_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    scenes: int = 12,
    scene_size: int = 512,
    tile_size: int = 128,
    pixel_size: float = 0.5,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    epsg: int = 32633,
    dtype: str = "uint8",
    bands: int = 3,
    change_rate: float = 1.0,
    label_min_fraction: float = 0.0,
    geotiffs: bool = True,
    overwrite: bool = False,
    workers: int | None = 1,
    progress: Progress | None = None,
) -> Path:
    """Generate ``scenes`` pairs and write them as tiles (and GeoTIFFs); returns the tile root.

    Everything is written to a hidden folder first and moved into ``out_dir`` at the end,
    so an interrupted run leaves no half data set. ``out_dir/tiles`` is the tile root,
    ``out_dir/scenes`` holds the GeoTIFFs, ``out_dir/synth.json`` the parameters.
    ``workers`` processes generate the scenes (None: one per CPU, at most 4); the output
    does not depend on it. Worker processes are spawned, so a script that asks for them
    must call this under ``if __name__ == "__main__":``.

    ``bands`` is 3 (RGB) or 4 (RGB + near infrared); ``change_rate`` multiplies how many
    changes happen; a tile is labelled changed when more than ``label_min_fraction`` of its
    pixels changed (0: any changed pixel, as in LEVIR-CD; a small fraction mimics someone
    labelling images by eye, who would not call a tile changed for a sliver of a
    neighbouring change).
    """
    progress = progress or NullProgress()
    check_scene_args(scene_size, pixel_size)
    _check_dataset_args(scenes, scene_size, tile_size, dtype)
    _check_bands(bands)
    if not (change_rate >= 0 and 0 <= label_min_fraction < 1):
        raise ParameterError("The change rate must be at least 0 and the labelling fraction "
                             f"in [0, 1), not {change_rate} and {label_min_fraction}.")
    shares = _check_splits(splits)
    projected_crs(epsg)
    out = Path(out_dir)
    created = not out.exists()
    _prepare(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        labels: dict[str, dict[str, int]] = {}
        origins = _origins(epsg, seed, scenes, scene_size * pixel_size)
        with contextlib.closing(_generate(seed, scenes, scene_size, pixel_size, workers,
                                           change_rate)) as pairs:
            for i, pair in enumerate(pairs):
                name = f"scene_{i:03d}"
                if geotiffs:
                    write_scene_pair(pair, tmp / "scenes", name, epsg=epsg, origin=origins[i],
                                     pixel_size=pixel_size, dtype=dtype, bands=bands)
                labels[name] = write_tiles(pair, tmp / "tiles", name, tile_size, dtype, bands,
                                           label_min_fraction)
                progress.update("synth", i + 1, scenes, name)
                check_cancelled(progress)
        split = split_scenes(sorted(labels), shares, seed)
        _write_lists(tmp / "tiles" / "list", split, labels)
        summary = _summary(seed, scenes, scene_size, tile_size, pixel_size, epsg, dtype, split,
                           labels)
        summary.update(bands=bands, change_rate=change_rate,
                       label_min_fraction=label_min_fraction)
        (tmp / SYNTH_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return out / "tiles"


def _generate(
    seed: int, scenes: int, size: int, pixel_size: float, workers: int | None,
    change_rate: float = 1.0,
) -> Generator[ScenePair, None, None]:
    """The scene pairs in order, made in worker processes when there are enough scenes.

    Workers are spawned, not forked, so that a parent holding torch threads is safe.
    """
    seeds = [scene_seed(seed, i) for i in range(scenes)]
    workers = min(os.cpu_count() or 1, MAX_WORKERS) if workers is None else workers
    if workers <= 1 or scenes <= workers:
        for s in seeds:
            yield make_scene_pair(s, size, pixel_size, change_rate)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(make_scene_pair, seeds, repeat(size), repeat(pixel_size),
                            repeat(change_rate))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_tiles(
    pair: ScenePair, root: Path, name: str, tile_size: int, dtype: str = "uint8",
    bands: int = 3, label_min_fraction: float = 0.0,
) -> dict[str, int]:
    """Cut a pair into non-overlapping tiles; returns ``{tile file name: 0|1}``.

    The label is 1 iff more than ``label_min_fraction`` of the tile's pixels changed (any
    changed pixel by default). Incomplete tiles at the right and bottom edges are dropped.
    """
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    h, w = pair.shape
    t1, t2 = as_image(pair.t1, dtype, bands), as_image(pair.t2, dtype, bands)
    labels = {}
    for r in range(h // tile_size):
        for c in range(w // tile_size):
            win = (slice(r * tile_size, (r + 1) * tile_size),
                   slice(c * tile_size, (c + 1) * tile_size))
            fname = f"{name}_r{r}_c{c}.png"
            mask = pair.mask[win]
            _write_png(root / "A" / fname, t1[(slice(None), *win)])
            _write_png(root / "B" / fname, t2[(slice(None), *win)])
            _write_png(root / "label" / fname, (mask[None] * 255).astype(np.uint8))
            labels[fname] = int(mask.any() and mask.mean() > label_min_fraction)
    return labels


def split_scenes(
    names: Sequence[str], shares: Sequence[float], seed: int
) -> dict[str, list[str]]:
    """Assign whole scenes to train/val/test by ``shares``, shuffled by ``seed``.

    With three scenes or more, every split with a positive share gets at least one.
    """
    order = [names[i] for i in np.random.default_rng([seed, 7]).permutation(len(names))]
    n = len(order)
    counts = {s: 0 for s in SPLITS}
    if n >= 3:
        for s, share in zip(SPLITS[1:], shares[1:], strict=True):
            counts[s] = max(1, round(n * share)) if share > 0 else 0
        while counts["val"] + counts["test"] > n - (1 if shares[0] > 0 else 0):
            larger = max(("val", "test"), key=lambda s: counts[s])
            counts[larger] -= 1
    counts["train"] = n - counts["val"] - counts["test"]
    out, start = {}, 0
    for s in SPLITS:
        out[s] = sorted(order[start:start + counts[s]])
        start += counts[s]
    return out


def scene_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of scene ``index`` in the data set of ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def with_nir(img: np.ndarray) -> np.ndarray:
    """RGB plus a near-infrared band derived from it: vegetation (green above red) is bright
    in the NIR, water (blue above green) dark, and built surfaces follow their brightness,
    as in real 4-band orthophotos. (4, H, W) uint8."""
    r, g, b = (band.astype(np.float32) for band in img)
    brightness = (r + g + b) / 3
    vegetation = np.clip((g - r) / (g + r + 1), 0, 1)
    water = np.clip((b - g) / (b + g + 1), 0, 1)
    nir = np.clip(brightness * (1 + 3.0 * vegetation - 2.0 * water) + 10 * vegetation, 0, 255)
    return np.concatenate([img, nir.astype(np.uint8)[None]])


def as_image(img: np.ndarray, dtype: str, bands: int = 3) -> np.ndarray:
    """An RGB render as written: with a NIR band when ``bands`` is 4, in ``dtype``."""
    return as_dtype(with_nir(img) if bands == 4 else img, dtype)


def as_dtype(img: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 as is; uint16 as a 12-bit-like sensor range (value * 15 + 100, dark offset)."""
    _check_dtype(dtype)
    if dtype == "uint8":
        return img
    return img.astype(np.uint16) * 15 + 100


def projected_crs(epsg: int) -> CRS:
    """The CRS of ``epsg``, which must be projected with metre units."""
    try:
        crs = CRS.from_epsg(int(epsg))
    except (CRSError, ValueError, TypeError) as exc:
        raise ParameterError(f"EPSG:{epsg} is not a known coordinate reference system.") from exc
    unit = crs.linear_units_factor[0] if crs.is_projected else None
    if unit not in ("metre", "meter"):
        raise ParameterError(f"EPSG:{epsg} is not a projected CRS in metres; choose one such "
                             "as a UTM zone (e.g. 32633).")
    return crs


def default_origin(epsg: int) -> tuple[float, float]:
    """A whole-kilometre point in the CRS's area of use, north of its centre.

    North of the centre because the area of a northern UTM zone spans 0-84 degrees and
    its middle latitude is mostly sea; 60 % of the way up lands on inhabited land.
    """
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    area = ProjCRS.from_epsg(int(epsg)).area_of_use
    if area is None:
        return 0.0, 0.0
    lon = (area.west + area.east) / 2
    lat = area.south + 0.6 * (area.north - area.south)
    x, y = Transformer.from_crs(4326, int(epsg), always_xy=True).transform(lon, lat)
    return float(round(x, -3)), float(round(y, -3))


# ---------------------------------------------------------------- helpers


def _origins(epsg: int, seed: int, scenes: int, extent: float) -> list[tuple[float, float]]:
    """Upper-left corners of the scenes: side by side in rows, near the CRS's centre
    moved by the seed, so that the scenes of a data set never overlap."""
    x, y = default_origin(epsg)
    dx, dy = np.random.default_rng([seed, 11]).uniform(-20000, 20000, 2)
    x, y = x + round(float(dx), -1), y + round(float(dy), -1)
    step = extent + SCENE_GAP_M
    return [(x + (i % SCENES_PER_ROW) * step, y - (i // SCENES_PER_ROW) * step)
            for i in range(scenes)]


def _write_geotiff(
    path: Path, data: np.ndarray, crs: CRS, transform, tags: dict[str, str],
    descriptions: tuple[str, ...],
) -> None:
    """Tiled, deflate-compressed GeoTIFF without nodata (the scenes cover every pixel)."""
    count, h, w = data.shape
    block = 256 if min(h, w) > 256 else max(16, 16 * (min(h, w) // 32))
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": data.dtype.name,
        "crs": crs, "transform": transform, "tiled": True, "blockxsize": block,
        "blockysize": block, "compress": "deflate", "predictor": 2, "interleave": "pixel",
    }
    if count == 3:
        profile["photometric"] = "RGB"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for band, text in enumerate(descriptions, start=1):
            dst.set_band_description(band, text)


def _write_png(path: Path, data: np.ndarray) -> None:
    """A PNG through GDAL, without georeferencing and without .aux.xml side files."""
    count, h, w = data.shape
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=w, height=h, count=count,
                           dtype=data.dtype.name, zlevel=PNG_ZLEVEL) as dst:
            dst.write(data)


def _write_lists(root: Path, split: dict[str, list[str]], labels: dict[str, dict[str, int]]):
    """``<split>.txt`` with tile names and ``<split>_label.txt`` with ``name,label``."""
    root.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        tiles = sorted(t for scene in split[s] for t in labels[scene])
        flat = {t: lab for scene in split[s] for t, lab in labels[scene].items()}
        (root / f"{s}.txt").write_text("".join(f"{t}\n" for t in tiles))
        (root / f"{s}_label.txt").write_text("".join(f"{t},{flat[t]}\n" for t in tiles))


def _summary(
    seed: int, scenes: int, scene_size: int, tile_size: int, pixel_size: float, epsg: int,
    dtype: str, split: dict[str, list[str]], labels: dict[str, dict[str, int]],
) -> dict:
    """What ``synth.json`` records: the parameters and the label balance per split."""
    per_split = {}
    for s in SPLITS:
        values = [v for scene in split[s] for v in labels[scene].values()]
        per_split[s] = {"scenes": split[s], "tiles": len(values), "changed": int(sum(values))}
    return {
        "generator": "kdmsi_train.synth", "seed": seed, "scenes": scenes,
        "scene_size": scene_size, "tile_size": tile_size, "pixel_size": pixel_size,
        "epsg": epsg, "dtype": dtype, "splits": per_split,
    }


def _prepare(out: Path, overwrite: bool) -> None:
    """Create ``out``, or check that it may be filled: empty, or ``overwrite`` given."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose a folder for the data set.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out} is not empty; choose an empty folder or pass --overwrite.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create {out}: {exc.strerror}.") from exc


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished outputs into ``out``, replacing those of an earlier run."""
    for entry in OUTPUTS:
        target = out / entry
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (tmp / entry).exists():
            os.replace(tmp / entry, target)


def _check_dtype(dtype: str) -> None:
    """Refuse a data type the writers do not produce."""
    if dtype not in DTYPES:
        raise ParameterError(f"The data type must be one of {', '.join(DTYPES)}, not {dtype!r}.")


def _check_bands(bands: int) -> None:
    """Refuse a band count the writers do not produce."""
    if bands not in BAND_NAMES:
        raise ParameterError(f"The band count must be 3 (RGB) or 4 (RGB + NIR), not {bands}.")


def _check_dataset_args(scenes: int, scene_size: int, tile_size: int, dtype: str) -> None:
    """Refuse counts and sizes that cannot make a tile set, before anything is written."""
    if scenes < 1:
        raise ParameterError(f"The number of scenes must be at least 1, not {scenes}.")
    if tile_size < 16:
        raise ParameterError(f"The tile size must be at least 16 pixels, not {tile_size}.")
    if tile_size > scene_size:
        raise ParameterError(f"The tile size ({tile_size}) must not exceed the scene size "
                             f"({scene_size}).")
    _check_dtype(dtype)


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    """Normalise train/val/test shares; they must be three non-negative numbers."""
    values = tuple(float(s) for s in splits)
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise ParameterError("The splits must be three non-negative shares (train, val, test) "
                             f"with a positive sum, not {tuple(splits)}.")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total
