"""Shapes in pixel coordinates (x = column, y = row) and their rasterisation.

Everything a scene holds is a shapely geometry or an oriented rectangle in pixel units,
so one ``rasterize`` call draws hundreds of objects and masks come out exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True)
class Rect:
    """An oriented rectangle: centre, ``length`` along ``angle`` (radians), ``width`` across."""

    cx: float
    cy: float
    length: float
    width: float
    angle: float

    @property
    def axis(self) -> tuple[float, float]:
        """Unit vector along the length."""
        return float(np.cos(self.angle)), float(np.sin(self.angle))

    def corners(self) -> np.ndarray:
        """The four corners, (4, 2) as (x, y), in ring order."""
        (ux, uy), a, b = self.axis, self.length / 2, self.width / 2
        su = np.array([-1.0, 1.0, 1.0, -1.0])[:, None] * a * np.array([ux, uy])
        sv = np.array([-1.0, -1.0, 1.0, 1.0])[:, None] * b * np.array([-uy, ux])
        return np.array([self.cx, self.cy]) + su + sv

    def polygon(self) -> Polygon:
        """The rectangle as a shapely polygon."""
        return Polygon(self.corners())

    def local(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates (u along the length, v across) of points relative to the centre."""
        ux, uy = self.axis
        dx, dy = xs - self.cx, ys - self.cy
        return dx * ux + dy * uy, -dx * uy + dy * ux

    def moved(self, along: float, across: float) -> Rect:
        """The same rectangle moved in its own frame."""
        ux, uy = self.axis
        return Rect(
            self.cx + along * ux - across * uy,
            self.cy + along * uy + across * ux,
            self.length,
            self.width,
            self.angle,
        )


def bezier(points: Sequence[tuple[float, float]], n: int = 48) -> LineString:
    """A smooth curve through the control ``points`` (curved roads and rivers)."""
    p = np.asarray(points, dtype=float)[:, None, :] * np.ones((1, n, 1))
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    while len(p) > 1:  # de Casteljau
        p = p[:-1] * (1 - t) + p[1:] * t
    return LineString(p[0])


def burn(
    shapes: Iterable[tuple[BaseGeometry, int]] | Iterable[BaseGeometry],
    shape: tuple[int, int],
    dtype: type = np.uint8,
) -> np.ndarray:
    """Rasterise geometries in pixel coordinates; an empty input gives zeros."""
    shapes = [s for s in shapes if not (s[0] if isinstance(s, tuple) else s).is_empty]
    if not shapes:
        return np.zeros(shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio warns about the identity transform
        return rasterize(shapes, out_shape=shape, fill=0, default_value=1, dtype=dtype)


def rotated(geom: BaseGeometry, angle: float, origin: tuple[float, float]) -> BaseGeometry:
    """Rotate a geometry by ``angle`` radians about ``origin``."""
    return affinity.rotate(geom, angle, origin=origin, use_radians=True)
