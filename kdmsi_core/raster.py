"""Pair I/O: open and validate two dates, put t2 on t1's grid, read windows with a validity mask.

t1 defines the grid. t2 is read through a :class:`~rasterio.vrt.WarpedVRT` when its CRS,
resolution or pixel alignment differ (bilinear, on the fly, no full copy); when it only sits
whole pixels away from t1 it is read directly at an offset window. Validity combines every
kind of GDAL mask (nodata value, internal mask, alpha band, NaN) of both dates; a NaN or
infinite float is nodata for its own pixel only. GDAL virtual paths (``/vsizip/``,
``/vsicurl/`` ...) are passed to GDAL untouched, and a read that GDAL fails (a truncated or
damaged file) is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from kdmsi_core.errors import InputError, ParameterError
from kdmsi_core.normalize import Normalization, for_data, is_eight_bit

STATS_SIZE = 1024
"""Longest side of the decimated read from which a 16-bit or float stretch is estimated."""


@dataclass(frozen=True)
class Grid:
    """The output grid: t1's CRS, transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int


def _is_virtual(path: str) -> bool:
    """A GDAL virtual file system path (``/vsizip/``, ``/vsicurl/`` ...), kept as given."""
    return path.startswith("/vsi")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence rasterio's warning about a missing geotransform: :func:`open_raster` reports
    it as one sentence instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def open_raster(path: str | os.PathLike, role: str) -> rasterio.DatasetReader:
    """Open one date, turning every way it can be unusable into one :class:`InputError`."""
    name = os.fspath(path)
    virtual = _is_virtual(name)
    if not virtual:
        p = Path(name)
        if not p.exists():
            raise InputError(f"The {role} raster {p} does not exist; check the path.")
        if p.is_dir():
            raise InputError(f"The {role} raster {p} is a folder, not a raster file.")
        if not os.access(p, os.R_OK):
            raise InputError(f"The {role} raster {p} cannot be read (permission denied).")
    try:
        with _quiet():
            src = rasterio.open(name)
    except RasterioIOError:
        if virtual:
            raise InputError(f"GDAL cannot open the {role} raster {name}; check the virtual "
                             "path and the file it points to.") from None
        raise InputError(f"The {role} input {name} is not a raster GDAL can read; give a "
                         "GeoTIFF or another georeferenced raster.") from None
    located = not src.transform.is_identity
    if src.crs is None or not located:
        src.close()
        if src.crs is None and not located:
            raise InputError(f"The {role} raster {name} is not georeferenced (no coordinate "
                             "reference system, no geotransform); give a GeoTIFF or "
                             "georeference it (for example `gdal_translate -a_srs EPSG:32633 "
                             "-a_ullr ULX ULY LRX LRY`) and run again.")
        if src.crs is None:
            raise InputError(f"The {role} raster {name} has no coordinate reference system; "
                             "assign one (for example `rio edit-info --crs EPSG:32633`) and "
                             "run again.")
        raise InputError(f"The {role} raster {name} has a coordinate reference system but no "
                         "geotransform, so its pixels have no place on the ground; "
                         "georeference it (for example `gdal_translate -a_ullr ULX ULY LRX "
                         "LRY` or `gdalwarp` for ground control points) and run again.")
    return src


def absolute(path: str | os.PathLike) -> str:
    """``path`` as another process (a Dask worker) must be given it: resolved, except a
    GDAL virtual path, which is kept exactly as given."""
    name = os.fspath(path)
    return name if _is_virtual(name) else str(Path(name).resolve())


def dataset_files(path: str | os.PathLike) -> list[str]:
    """The path and every file GDAL reads for it (a VRT's sources, side files); the path
    alone when GDAL cannot open it (opening it later says why)."""
    name = os.fspath(path)
    try:
        with _quiet(), rasterio.open(name) as src:
            return [name, *src.files]
    except RasterioIOError:
        return [name]


@contextmanager
def reading(name: str) -> Iterator[None]:
    """A read that GDAL fails becomes an :class:`InputError` naming the file."""
    try:
        yield
    except RasterioIOError as exc:
        cause = exc.__cause__ or exc
        detail = (str(cause).splitlines() or ["read error"])[0].rstrip(".").replace(". ", "; ")
        raise InputError(f"GDAL could not read {name} ({detail}); the file is truncated or "
                         "damaged, replace it.") from None


def data_bands(src: rasterio.DatasetReader) -> list[int]:
    """Band indexes that hold imagery (alpha bands are masks, not data)."""
    return [i for i, ci in zip(src.indexes, src.colorinterp, strict=True)
            if ci != ColorInterp.alpha]


def select_bands(src1: rasterio.DatasetReader, src2: rasterio.DatasetReader,
                 bands: Sequence[int] | None, expected: int) -> tuple[int, ...]:
    """The 1-based bands to feed the model: ``bands`` checked against both files, or all data
    bands when their count matches the model."""
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) != expected:
            raise ParameterError(f"--bands lists {len(bands)} band(s) but the model expects "
                                 f"{expected}.")
        for src in (src1, src2):
            bad = [b for b in bands if not 1 <= b <= src.count]
            if bad:
                raise ParameterError(f"--bands {bad[0]} is out of range: {Path(src.name).name} "
                                     f"has bands 1 to {src.count}.")
        return bands
    chosen = []
    for src in (src1, src2):
        found = data_bands(src)
        if len(found) != expected:
            advice = (f"choose them with --bands (for example --bands "
                      f"{','.join(str(i) for i in range(1, expected + 1))})"
                      if src.count >= expected else
                      f"give rasters with {expected} bands or a model trained on "
                      f"{len(found)}-band data")
            raise InputError(f"{Path(src.name).name} has {len(found)} data band(s) but the model "
                             f"expects {expected}; {advice}.")
        chosen.append(tuple(found))
    return chosen[0]


def _offset_if_aligned(src1: rasterio.DatasetReader,
                       src2: rasterio.DatasetReader) -> tuple[int, int] | None:
    """(col, row) of t1's origin in t2's pixels when both grids share CRS, resolution and
    pixel alignment, else ``None`` (t2 must then be warped)."""
    if src1.crs != src2.crs:
        return None
    a, b = src1.transform, src2.transform
    if not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
               for x, y in zip(a[:2] + a[3:5], b[:2] + b[3:5], strict=True)):
        return None
    col, row = ~b @ (a.c, a.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def _warped(src2: rasterio.DatasetReader, grid: Grid) -> WarpedVRT:
    """t2 on t1's grid; an alpha band is added when t2 has no nodata value, so that pixels
    outside its footprint (and its internal mask) stay invalid."""
    has_alpha = any(ci == ColorInterp.alpha for ci in src2.colorinterp)
    extra = {"add_alpha": True} if src2.nodata is None and not has_alpha else {}
    return WarpedVRT(src2, crs=grid.crs, transform=grid.transform, width=grid.width,
                     height=grid.height, resampling=Resampling.bilinear, **extra)


def overlap_window(src1: rasterio.DatasetReader, src2: rasterio.DatasetReader) -> Window:
    """t1's pixels inside t2's footprint (its bounds in t1's CRS, rounded outwards)."""
    left, bottom, right, top = transform_bounds(src2.crs, src1.crs, *src2.bounds,
                                                densify_pts=21)
    b1 = src1.bounds
    left, right = max(left, min(b1.left, b1.right)), min(right, max(b1.left, b1.right))
    bottom, top = max(bottom, min(b1.bottom, b1.top)), min(top, max(b1.bottom, b1.top))
    if left < right and bottom < top:
        win = _outward(from_bounds(left, bottom, right, top, src1.transform))
        c0, r0 = max(win.col_off, 0), max(win.row_off, 0)
        c1 = min(win.col_off + win.width, src1.width)
        r1 = min(win.row_off + win.height, src1.height)
        if c1 > c0 and r1 > r0:
            return Window(c0, r0, c1 - c0, r1 - r0)
    raise InputError(f"The footprints of {Path(src1.name).name} and {Path(src2.name).name} "
                     "do not overlap; check that both cover the same place and carry the "
                     "right CRS.")


class RasterPair:
    """Two open dates on one grid; ``read(window)`` gives both dates' bands and their joint
    validity, never more than the window."""

    def __init__(self, t1: str | os.PathLike, t2: str | os.PathLike,
                 bands: Sequence[int] | None, expected_bands: int) -> None:
        self.names = (os.fspath(t1), os.fspath(t2))
        self._src1 = open_raster(t1, "t1")
        self._src2: rasterio.DatasetReader | None = None
        self._vrt: WarpedVRT | None = None
        try:
            self._src2 = open_raster(t2, "t2")
            src1, src2 = self._src1, self._src2
            self.bands = select_bands(src1, src2, bands, expected_bands)
            self.grid = Grid(src1.crs, src1.transform, src1.width, src1.height)
            self.window = overlap_window(src1, src2)
            self._offset = _offset_if_aligned(src1, src2)
            if self._offset is None:
                self._vrt = _warped(src2, self.grid)
            self.dtypes = (src1.dtypes[self.bands[0] - 1], src2.dtypes[self.bands[0] - 1])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ds in (self._vrt, self._src2, self._src1):
            if ds is not None:
                ds.close()

    def __enter__(self) -> RasterPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t1, t2, valid) for ``window`` of the grid: float32 (C, h, w) twice and bool (h, w)."""
        with reading(self.names[0]):
            a1, v1 = _read_valid(self._src1, self.bands, window)
        with reading(self.names[1]):
            if self._offset is None:
                a2, v2 = _read_valid(self._vrt, self.bands, window)
            else:
                a2, v2 = self._read_shifted(window)
        return a1, a2, v1 & v2

    def _read_shifted(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read t2 at the whole-pixel offset; what lies outside t2 is invalid."""
        src2 = self._src2
        dx, dy = self._offset
        h, w = int(window.height), int(window.width)
        data = np.zeros((len(self.bands), h, w), np.float32)
        valid = np.zeros((h, w), bool)
        shifted = Window(window.col_off + dx, window.row_off + dy, w, h)
        if _intersects(shifted, src2):
            inner = shifted.intersection(Window(0, 0, src2.width, src2.height))
            r0, c0 = int(inner.row_off - shifted.row_off), int(inner.col_off - shifted.col_off)
            part, ok = _read_valid(src2, self.bands, inner)
            data[:, r0:r0 + part.shape[1], c0:c0 + part.shape[2]] = part
            valid[r0:r0 + ok.shape[0], c0:c0 + ok.shape[1]] = ok
        return data, valid

    def normalizations(self, card: Normalization) -> tuple[Normalization, Normalization]:
        """Per date: the checkpoint's own rule, or, when an 8-bit model meets 16-bit or float
        data (see :func:`needs_stretch`), the shared rule of
        :func:`kdmsi_core.normalize.data_range`: 8-bit-like values keep 0..255, others get a
        2nd-98th percentile stretch per band.

        When both dates need it and share a data type, one stretch is computed from both
        together: a separate stretch per date would let the change itself (say new bright
        roofs) move that date's percentiles and make all of its unchanged ground differ.
        """
        stretch = [needs_stretch(card, dtype) for dtype in self.dtypes]
        sources = (self._src1, self._src2)
        if all(stretch) and self.dtypes[0] == self.dtypes[1]:
            ranged = for_data(card, np.concatenate([self._sample(src) for src in sources],
                                                   axis=1))
            return ranged, ranged
        result = tuple(for_data(card, self._sample(src)) if s else card
                       for src, s in zip(sources, stretch, strict=True))
        return result[0], result[1]

    def _sample(self, src: rasterio.DatasetReader) -> np.ndarray:
        """Valid pixels (C, n) of a decimated read (overviews are used when present) of the
        part of ``src`` that the analysed window covers."""
        bounds = rasterio.windows.bounds(self.window, self.grid.transform)
        if src.crs != self.grid.crs:
            bounds = transform_bounds(self.grid.crs, src.crs, *bounds, densify_pts=21)
        win = from_bounds(*bounds, src.transform).intersection(
            Window(0, 0, src.width, src.height))
        scale = min(1.0, STATS_SIZE / max(win.width, win.height))
        shape = (max(1, round(win.height * scale)), max(1, round(win.width * scale)))
        with reading(self.names[0 if src is self._src1 else 1]):
            data = src.read(self.bands, window=win, out_shape=(len(self.bands), *shape),
                            resampling=Resampling.nearest, masked=True)
        valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.data).all(axis=0)
        return data.data[:, valid].astype(np.float64)


def needs_stretch(card: Normalization, dtype: str) -> bool:
    """An 8-bit model (range 0..255) fed anything but 8-bit data: the fixed range would
    saturate or flatten it, so the data are stretched instead (their percentiles onto the
    card's reference, :func:`~kdmsi_core.normalize.data_range`). Any other range the
    checkpoint records was chosen for its data type and is used as is."""
    return is_eight_bit(card) and np.dtype(dtype).itemsize != 1


def _outward(win: Window, eps: float = 1e-6) -> Window:
    """The smallest whole-pixel window holding ``win`` (float noise ignored)."""
    c0, r0 = math.floor(win.col_off + eps), math.floor(win.row_off + eps)
    c1 = math.ceil(win.col_off + win.width - eps)
    r1 = math.ceil(win.row_off + win.height - eps)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _intersects(win: Window, src: rasterio.DatasetReader) -> bool:
    return (win.col_off < src.width and win.row_off < src.height
            and win.col_off + win.width > 0 and win.row_off + win.height > 0)


def _read_valid(ds: rasterio.io.DatasetReaderBase, bands: tuple[int, ...],
                window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Bands as float32 and where every band is valid (GDAL masks and finite values);
    non-finite values are set to 0 so that they cannot spread through the network."""
    data = ds.read(bands, window=window, out_dtype=np.float32)
    if all(flags == [MaskFlags.all_valid] for flags in
           (ds.mask_flag_enums[b - 1] for b in bands)):
        valid = np.ones(data.shape[1:], bool)  # no mask of any kind: skip reading one
    else:
        valid = (ds.read_masks(bands, window=window) > 0).all(axis=0)
    if np.dtype(ds.dtypes[bands[0] - 1]).kind == "f":
        finite = np.isfinite(data)
        valid &= finite.all(axis=0)
        data[~finite] = 0.0
    return data, valid
