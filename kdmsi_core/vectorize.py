"""Change polygons from the stitched change raster, with their area and probabilities.

GDAL's polygonizer runs on the raster band itself (so it streams the file instead of an
array, and works on the whole stitched raster: no seams or slivers at tile borders). Each
polygon's probabilities are then read back by window, in row chunks for huge regions, and
the features go to a GeoPackage 1.2 (QGIS 3.22 opens it without a warning) in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.affinity import affine_transform
from shapely.geometry import Polygon, shape

from kdmsi_core.progress import NullProgress, Progress, check_cancelled

LAYER = "changes"
FIELDS = ("area_m2", "mean_prob", "max_prob")
BATCH = 5000
MIN_AREA_CELLS = 2
"""Regions smaller than this many cells of the model's output grid are dropped by default:
the network cannot place anything more finely than about one cell."""


def default_min_area(stride: int, pixel: float | None, factor: float = 1.0) -> float:
    """:data:`MIN_AREA_CELLS` cells of ``stride`` x ``stride`` pixels in m², at the pixel
    size the model reads the imagery at: ``pixel`` (metres) over the resolution ``factor``
    (< 1 where finer imagery is read reduced). 0 where the pixel size is unknown."""
    if not pixel:
        return 0.0
    return MIN_AREA_CELLS * (stride * pixel / factor) ** 2
CHUNK_PIXELS = 1 << 22
SMALL_WINDOW = 1 << 14


def area_function(crs: CRS) -> Callable[[Polygon], float]:
    """Square metres of a polygon in ``crs``: planar area times the unit's size for a
    projected CRS, geodesic area on the CRS's ellipsoid for a geographic one."""
    if crs.is_geographic:
        geod = ProjCRS.from_wkt(crs.to_wkt()).get_geod()
        return lambda geom: abs(geod.geometry_area_perimeter(geom)[0])
    factor = crs.linear_units_factor[1]
    return lambda geom: geom.area * factor * factor


def _polygons(changes: rasterio.DatasetReader) -> Iterator[Polygon]:
    """Connected change regions (4-connectivity) in map coordinates (GDAL applies the
    dataset's transform), each a valid polygon."""
    band = rasterio.band(changes, 1)
    for geojson, _ in rasterio.features.shapes(band, mask=band, connectivity=4):
        geom = shape(geojson)
        if geom.is_valid:
            yield geom
        else:
            fixed = shapely.make_valid(geom)
            yield from (g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon))


def _inside(geom: Polygon, col: int, row: int, height: int, width: int) -> np.ndarray:
    """Pixels of the window whose centre lies in the pixel-space polygon (GDAL's rule).
    Small windows test the centres directly (far cheaper than a rasterize call per polygon),
    large ones are burnt by GDAL."""
    if height * width <= SMALL_WINDOW:
        xs, ys = np.meshgrid(np.arange(col, col + width) + 0.5, np.arange(row, row + height) + 0.5)
        return shapely.contains_xy(geom, xs, ys)
    return rasterio.features.geometry_mask([geom], (height, width),
                                           Affine.translation(col, row), invert=True)


def _stats(geom: Polygon, prob: rasterio.DatasetReader) -> tuple[float, float]:
    """Mean and max probability of the pixels inside a pixel-space polygon, read in row
    chunks so that a region as large as the raster still needs little memory."""
    c0, r0, c1, r1 = (int(round(v)) for v in geom.bounds)
    width = c1 - c0
    step = max(1, CHUNK_PIXELS // max(width, 1))
    total, count, peak = 0.0, 0, -np.inf
    for row in range(r0, r1, step):
        h = min(step, r1 - row)
        values = prob.read(1, window=Window(c0, row, width, h))
        inside = _inside(geom, c0, row, h, width) & (values != prob.nodata)
        if inside.any():
            picked = values[inside].astype(np.float64)
            total, count = total + picked.sum(), count + picked.size
            peak = max(peak, float(picked.max()))
    return (total / count, peak) if count else (float("nan"), float("nan"))


def _crs_for_ogr(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def write_features(path: Path, geoms: list[bytes], values: list[tuple[float, float, float]],
                   crs: CRS, append: bool) -> None:
    """Write (or append) one batch of polygons with their fields to the ``changes`` layer."""
    columns = np.asarray(values, np.float64).reshape(-1, len(FIELDS)).T
    options = {} if append else {"dataset_options": {"VERSION": "1.2"}}
    pyogrio.raw.write(str(path), np.asarray(geoms, dtype=object), list(columns), list(FIELDS),
                      layer=LAYER, driver="GPKG", geometry_type="Polygon",
                      crs=_crs_for_ogr(crs), append=append, **options)


def vectorize(changes: Path, probability: Path, target: Path, min_area: float = 0.0,
              progress: Progress | None = None) -> tuple[int, float]:
    """Polygons of ``changes`` (uint8, 1 = change) with ``area_m2``, ``mean_prob`` and
    ``max_prob`` from ``probability``, those under ``min_area`` m² dropped, written to the
    GeoPackage ``target``. Returns (number of polygons, their total area in m²)."""
    progress = progress or NullProgress()
    progress.update("vectorize", 0, 1, "tracing change regions")
    with rasterio.open(changes) as ch, rasterio.open(probability) as prob:
        t = ~ch.transform
        to_pixels = [t.a, t.b, t.d, t.e, t.c, t.f]
        area_of = area_function(ch.crs)
        count, area, written = 0, 0.0, False
        geoms: list[bytes] = []
        values: list[tuple[float, float, float]] = []
        for geom in _polygons(ch):
            a = area_of(geom)
            if a < min_area:
                continue
            geoms.append(shapely.to_wkb(geom))
            values.append((a, *_stats(affine_transform(geom, to_pixels), prob)))
            count, area = count + 1, area + a
            if len(geoms) >= BATCH:
                check_cancelled(progress)
                write_features(target, geoms, values, ch.crs, append=written)
                written, geoms, values = True, [], []
                progress.update("vectorize", 0, 1, f"{count} polygons")
        write_features(target, geoms, values, ch.crs, append=written)
    progress.update("vectorize", 1, 1, f"{count} polygons")
    return count, area
