"""Meeting finer imagery at the ground resolution a model learnt from.

A network learns how large a house is in pixels. Imagery finer than its training data (a
0.15-m orthophoto for a model trained at 0.5 m) shows every object several times larger,
and the model, which never saw a roof that wide, finds fewer of them. Detection then reads
the data at the model's resolution: the MSI scales are multiplied by the ratio of the
pixel sizes (0.3 for 0.15 m against 0.5 m), so the network sees objects at the size it
learnt, on fewer pixels, while the outline refinement and the outputs stay on the data's
own grid. Coarser data are left as they are: enlarging them invents no detail, multiplies
the cost by the square of the ratio, and did not help on 1-m scenes (docs/measurements.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rasterio.crs import CRS
from rasterio.transform import Affine
from shapely.geometry import box

from kdmsi_core.vectorize import area_function

MIN_FACTOR = 0.125
"""The strongest reduction: the smallest MSI scale the command line accepts."""
LARGEST_TILE = 1024
"""Tiles grow with the reduction (so that the network sees as much ground as at the
model's own resolution) up to this side in pixels of the data."""


def ground_pixel_size(crs: CRS | None, transform: Affine, width: int, height: int
                      ) -> float | None:
    """The side in metres of a square of the same area as a pixel at the grid's centre
    (geodesic for a geographic CRS; a rotated grid's pixels by their sides); None without a
    CRS or a usable transform."""
    dx, dy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if crs is None or not (dx and dy):
        return None
    x, y = transform @ (width / 2, height / 2)
    area = area_function(crs)(box(x, y, x + dx, y + dy))
    return math.sqrt(area) if area > 0 and math.isfinite(area) else None


def reduction(data_pixel: float | None, model_pixel: float | None) -> float:
    """The factor applied to the MSI scales: data pixel / model pixel when the data are
    finer than what the model learnt from (at least :data:`MIN_FACTOR`), else 1."""
    if not data_pixel or not model_pixel or data_pixel >= model_pixel:
        return 1.0
    return max(MIN_FACTOR, round(data_pixel / model_pixel, 6))


def reduced_scales(scales: Sequence[float], factor: float) -> tuple[float, ...]:
    """``scales`` times ``factor``, rounded so that the card's scales come back unchanged
    at a factor of 1."""
    return tuple(round(float(s) * factor, 6) for s in scales)


def run_scales(card_scales: Sequence[float], model_pixel: float | None,
               data_pixel: float | None, scales: Sequence[float] | None = None,
               match: bool = True) -> tuple[tuple[float, ...], float]:
    """The scales a run uses and the factor behind them: ``scales`` as given (factor 1),
    else the card's, reduced when ``match`` and the data are finer than the model's."""
    if scales is not None:
        return tuple(float(s) for s in scales), 1.0
    factor = reduction(data_pixel, model_pixel) if match else 1.0
    return reduced_scales(card_scales, factor), factor


def reduced_tiling(tile_size: int, overlap: int, factor: float, stride: int
                   ) -> tuple[int, int]:
    """Tile side and overlap in data pixels that cover as much ground as ``tile_size`` and
    ``overlap`` at the model's resolution (the side a multiple of ``stride``, at most
    :data:`LARGEST_TILE`)."""
    if factor >= 1.0:
        return tile_size, overlap
    side = min(LARGEST_TILE, max(tile_size, int(tile_size / factor)))
    side -= side % stride
    grown = side / tile_size
    return side, min(side // 2, int(round(overlap * grown)))
