"""The GIS form of training data: two GeoTIFFs and polygons saying where something changed.

Each polygon of the labels layer carries an integer ``changed`` (1: something changed inside
this area; 0: nothing did). A changed area yields tiles that contain the whole area (areas
larger than a tile are read at a coarser resolution to fit); an unchanged area yields
tiles lying entirely inside it, as many as its size allows. Only windows are read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import shapely
import torch
import torch.nn.functional as F
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.windows import Window

from kdmsi_core.errors import DataError, InputError
from kdmsi_core.raster import RasterPair, data_bands, open_raster

MAX_DOWNSCALE = 4.0


@dataclass
class LabelAreas:
    """Label polygons in the raster's pixel coordinates (col, row)."""

    geometries: np.ndarray
    changed: np.ndarray


def read_label_areas(path: Path, raster_crs: CRS, inverse_transform) -> LabelAreas:
    """Polygons and their ``changed`` values, transformed into the raster's pixel space."""
    if not Path(path).is_file():
        raise InputError(f"The labels file {path} does not exist; check the path.")
    try:
        fields_present = list(pyogrio.read_info(path)["fields"])
        if "changed" not in fields_present:
            raise DataError(f"The labels layer {path} has no field 'changed'; add an integer "
                            "field 'changed' (1 = something changed inside the area, "
                            "0 = nothing did).")
        meta, _, wkb, fields = pyogrio.raw.read(path, columns=["changed"])
    except pyogrio.errors.DataSourceError:
        raise InputError(f"{path} is not a readable vector file; give a GeoPackage or "
                         "shapefile of polygons.") from None
    changed = np.asarray(fields[0])
    if changed.dtype.kind not in "iu" or not np.isin(changed, (0, 1)).all():
        raise DataError(f"The field 'changed' of {path} must hold the integers 0 and 1 only.")
    geoms = shapely.from_wkb(wkb)
    if meta.get("crs") is None:
        raise DataError(f"The labels layer {path} has no CRS; set one (e.g. in QGIS) so it can "
                        "be placed on the rasters.")
    try:
        transformer = Transformer.from_crs(CRS.from_user_input(meta["crs"]), raster_crs,
                                           always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(
            transformer.transform(xy[:, 0], xy[:, 1], errcheck=True)))
    except (CRSError, ProjError) as exc:
        raise DataError(f"The labels layer's CRS cannot be transformed to the rasters' CRS "
                        f"({exc}); reproject the labels to the rasters' CRS.") from None
    a, b, c, d, e, f = inverse_transform[:6]
    geoms = shapely.transform(geoms, lambda xy: np.column_stack(
        (a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f)))
    keep = ~shapely.is_empty(geoms)
    return LabelAreas(geoms[keep], changed[keep].astype(np.int64))


def sample_windows(areas: LabelAreas, width: int, height: int, tile: int, samples: int,
                   rng: np.random.Generator) -> list[tuple[Window, int]]:
    """Windows (in t1 pixels) and their labels, about half changed and half unchanged."""
    windows: list[tuple[Window, int]] = []
    bounds = shapely.box(0, 0, width, height)
    for g in areas.geometries[areas.changed == 1]:
        x0, y0, x1, y1 = g.bounds
        side = max(tile, int(np.ceil(max(x1 - x0, y1 - y0))) + 2)
        if side > tile * MAX_DOWNSCALE:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        win = Window(round(cx - side / 2), round(cy - side / 2), side, side)
        if bounds.contains(shapely.box(win.col_off, win.row_off, win.col_off + side,
                                       win.row_off + side)):
            windows.append((win, 1))
    negatives = [g for g in areas.geometries[areas.changed == 0]]
    if negatives:
        weights = np.array([g.area for g in negatives], dtype=np.float64)
        wanted = max(samples - len(windows), len(windows), 1)
        for _ in range(wanted * 20):
            if sum(1 for _, y in windows if y == 0) >= wanted:
                break
            g = negatives[int(rng.choice(len(negatives), p=weights / weights.sum()))]
            x0, y0, x1, y1 = g.bounds
            if x1 - x0 < tile or y1 - y0 < tile:
                continue
            col = int(rng.uniform(x0, x1 - tile))
            row = int(rng.uniform(y0, y1 - tile))
            box = shapely.box(col, row, col + tile, row + tile)
            if g.contains(box) and bounds.contains(box):
                windows.append((Window(col, row, tile, tile), 0))
    return windows


def _fit(x: np.ndarray, tile: int, dtype: np.dtype) -> np.ndarray:
    """A window larger than a tile, averaged down to the tile size and cast to ``dtype``;
    averages are rounded only for integer types (float data keep their fractions)."""
    if x.shape[-1] != tile:
        x = F.interpolate(torch.from_numpy(x)[None], size=(tile, tile), mode="area")[0].numpy()
        if dtype.kind in "iu":
            x = x.round()
    return x.astype(dtype)


class AreaStore:
    """Tiles sampled inside label areas, held in memory as a training split."""

    def __init__(self, t1: Path, t2: Path, labels: Path, tile: int, samples: int,
                 seed: int = 0, split: str = "train", window: int | None = None) -> None:
        """``window``: the side in t1 pixels of the sampled windows, each then reduced to
        ``tile`` (training at a coarser model's resolution); ``tile`` by default."""
        rng = np.random.default_rng(seed)
        side = window or tile
        with open_raster(t1, "t1") as src:
            count = len(data_bands(src))
        with RasterPair(t1, t2, None, count) as pair:
            grid = pair.grid
            areas = read_label_areas(labels, grid.crs, ~grid.transform)
            windows = sample_windows(areas, grid.width, grid.height, side, samples, rng)
            ys = np.array([y for _, y in windows], dtype=np.float32)
            if len(windows) == 0 or ys.min() == ys.max():
                reduced = (f" (tiles of {tile} px at the model's resolution; "
                           "--native-resolution trains on the rasters' own pixels)"
                           if side != tile else "")
                raise DataError(f"The label areas in {labels} yield {int(ys.sum())} changed and "
                                f"{int(len(ys) - ys.sum())} unchanged tiles of {side} px inside "
                                f"the rasters{reduced}; draw both kinds, unchanged areas at "
                                "least one tile wide.")
            dtype = np.dtype(pair.dtypes[0])
            self._a = np.empty((len(windows), len(pair.bands), tile, tile), dtype=dtype)
            self._b = np.empty_like(self._a)
            for i, (win, _) in enumerate(windows):
                a, b, _valid = pair.read(win)
                self._a[i], self._b[i] = (_fit(x, tile, dtype) for x in (a, b))
        self._rasters = (t1, t2, count)
        self._windows = [win for win, _ in windows]
        self.shape = self._a.shape[1:]
        self.dtype = self._a.dtype
        self.labels = ys
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._a[indices], self._b[indices]

    def read_at(self, indices: Sequence[int], size: int
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The windows of ``indices`` read again, one at a time, each fitted to ``size`` px:
        at the rasters' own pixels (``size`` = the window) where the tiles were reduced."""
        t1, t2, count = self._rasters
        with RasterPair(t1, t2, None, count) as pair:
            for i in indices:
                a, b, _valid = pair.read(self._windows[i])
                yield int(i), _fit(a, size, self.dtype), _fit(b, size, self.dtype)

    def take(self, indices: np.ndarray, split: str) -> AreaStore:
        """A subset (e.g. a validation split) sharing nothing mutable with this one."""
        other = object.__new__(AreaStore)
        other._a, other._b = self._a[indices], self._b[indices]
        other._rasters, other._windows = self._rasters, [self._windows[i] for i in indices]
        other.shape, other.dtype, other.labels, other.split = (self.shape, self.dtype,
                                                                self.labels[indices], split)
        return other
