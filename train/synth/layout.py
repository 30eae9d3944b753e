"""The data model of a synthetic scene and the primitives that place things in it.

A layout is pure geometry in pixel coordinates; it says nothing about colours of a given
date, so the two dates of a pair are rendered from (almost) the same layout and only the
listed objects differ between them. Placement claims pixels in an occupancy mask, so
nothing is built on water, roads, forest or another building.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
from shapely import affinity, ops
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from kdmsi_train.synth.geometry import Rect, burn

# parcel kinds
URBAN, RESIDENTIAL, FIELD, GRASS, SOIL, FOREST = range(6)


@dataclass(frozen=True)
class Box:
    """A building or a car: rectangles extruded to ``height`` metres under one roof."""

    parts: tuple[Rect, ...]
    height: float
    rgb: tuple[float, float, float]
    roof: str  # "gable", "hip", "flat" or "car"
    slope: float = 0.0  # roof pitch, radians
    ribbed: bool = False  # metal sheets
    extras: tuple[Rect, ...] = ()  # rooftop units on flat roofs
    wall: tuple[float, float, float] = (0.66, 0.62, 0.56)  # seen when the view is oblique

    def footprint(self) -> BaseGeometry:
        """Union of the parts: what a change mask marks."""
        return ops.unary_union([p.polygon() for p in self.parts])


@dataclass(frozen=True)
class Tree:
    """One crown: centre and radius in pixels, height in metres, a random tone."""

    x: float
    y: float
    r: float
    height: float
    tone: float
    conifer: bool

    def crown_points(self, scale: float = 1.0) -> np.ndarray:
        """Vertices (12, 2) of an irregular crown outline, the same at every date."""
        a = np.linspace(0, 2 * np.pi, 13)[:-1]
        wobble = 1 + 0.12 * np.sin(3 * a + 6.3 * self.tone) + 0.08 * np.sin(5 * a + 17 * self.tone)
        r = self.r * scale * wobble
        return np.stack([self.x + r * np.cos(a), self.y + r * np.sin(a)], axis=1)

    def crown(self, scale: float = 1.0) -> Polygon:
        """The crown outline as a polygon."""
        return Polygon(self.crown_points(scale))


@dataclass(frozen=True)
class Road:
    """A centre line with a width in pixels; markings are pre-computed polygons."""

    line: LineString
    width: float
    surface: str  # "asphalt" or "dirt"
    sidewalk: float
    tone: float
    markings: BaseGeometry

    def polygon(self, extra: float = 0.0) -> BaseGeometry:
        """The paved area, optionally grown by ``extra`` pixels on each side."""
        return self.line.buffer(self.width / 2 + extra, cap_style="flat")


@dataclass(frozen=True)
class Patch:
    """A ground surface drawn over the parcels: parking lot, soil, rubble, pool ..."""

    geom: BaseGeometry
    material: str
    lines: BaseGeometry | None = None  # painted lines (parking stalls)
    stalls: tuple[Rect, ...] = ()  # where cars may park


@dataclass
class Layout:
    """Everything in a scene that does not depend on the date."""

    shape: tuple[int, int]
    pixel_size: float
    style: str
    angle: float  # orientation of the street grid and most buildings
    parcel_ids: np.ndarray  # (H, W) index into the parcel arrays
    parcel_kind: np.ndarray  # (P,) parcel kind
    parcel_angle: np.ndarray  # (P,) crop row orientation
    parcel_period: np.ndarray  # (P,) crop row period, pixels
    parcel_tone: np.ndarray  # (P, 3) colour jitter
    water: np.ndarray  # (H, W) bool
    forest: np.ndarray  # (H, W) bool
    textures: dict[str, np.ndarray]
    occupied: np.ndarray  # (H, W) bool: no new building may go here
    conifer_share: float = 0.2  # of forest crowns and single trees
    roads: list[Road] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    buildings: list[Box] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)

    @functools.cached_property
    def kind(self) -> np.ndarray:
        """Parcel kind of every pixel (parcels never change between dates)."""
        return self.parcel_kind[self.parcel_ids]

    @functools.cached_property
    def borders(self) -> np.ndarray:
        """Pixels where the parcel changes: field edges, paths and hedges."""
        ids = self.parcel_ids
        out = np.zeros(ids.shape, bool)
        out[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        out[1:, :] |= ids[1:, :] != ids[:-1, :]
        return out

    @functools.cached_property
    def open_land(self) -> np.ndarray:
        """Pixels of parcels where something may be built (all but forest parcels)."""
        return self.kind != FOREST

    def m(self, metres: float) -> float:
        """Metres to pixels."""
        return metres / self.pixel_size

    def copy(self) -> Layout:
        """A copy whose object lists and occupancy can change independently."""
        return dataclasses.replace(
            self,
            occupied=self.occupied.copy(),
            roads=list(self.roads),
            patches=list(self.patches),
            buildings=list(self.buildings),
            trees=list(self.trees),
        )


# ---------------------------------------------------------------- placement


def fits(layout: Layout, rects: list[Rect], allowed: np.ndarray, gap: float) -> bool:
    """Claim the pixels of ``rects`` (plus ``gap``) if they are free and allowed.

    Footprints may leave the image (buildings are cut by tile edges in real data) as long
    as most of their area is inside.
    """
    h, w = layout.shape
    grown = [Rect(r.cx, r.cy, r.length + 2 * gap, r.width + 2 * gap, r.angle) for r in rects]
    corners = np.concatenate([g.corners() for g in grown])
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return False
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    inside = _any_contains(rects, xx, yy)
    area = sum(r.length * r.width for r in rects)
    window = (slice(y0, y1), slice(x0, x1))
    if inside.sum() < 0.6 * area or (layout.occupied[window] & inside).any():
        return False
    if not allowed[window][inside].all():
        return False
    layout.occupied[window] |= _any_contains(grown, xx, yy)
    return True


def _any_contains(rects: list[Rect], xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Which of the points (broadcast ``xx``, ``yy``) lie in any of ``rects``."""
    out = np.zeros(np.broadcast_shapes(xx.shape, yy.shape), bool)
    for r in rects:
        u, v = r.local(xx, yy)
        out |= (np.abs(u) <= r.length / 2) & (np.abs(v) <= r.width / 2)
    return out


def sample_points(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` random pixel centres (x, y) inside ``mask``."""
    idx = np.flatnonzero(mask)
    if idx.size == 0 or n <= 0:
        return np.zeros((0, 2))
    pick = rng.choice(idx, size=n)
    ys, xs = np.divmod(pick, mask.shape[1])
    return np.stack([xs, ys], axis=1) + rng.random((n, 2))


def grid_angle(rng: np.random.Generator, layout: Layout, jitter: float = 0.03) -> float:
    """An orientation along the street grid, with a little scatter."""
    return layout.angle + rng.choice([0.0, np.pi / 2]) + rng.normal(0, jitter)


def claim(layout: Layout, geom: BaseGeometry, allowed: np.ndarray) -> bool:
    """Mark ``geom`` as occupied if it lies on free, allowed pixels."""
    if geom.is_empty:
        return False
    x0, y0, x1, y1 = (int(v) for v in geom.bounds)
    h, w = layout.shape
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 2, w), min(y1 + 2, h)
    if x0 >= x1 or y0 >= y1:
        return False
    inside = burn([affinity.translate(geom, -x0, -y0)], (y1 - y0, x1 - x0)).astype(bool)
    window = (slice(y0, y1), slice(x0, x1))
    if not inside.any() or not allowed[window][inside].all():
        return False
    if (layout.occupied[window] & inside).any():
        return False
    layout.occupied[window] |= inside
    return True


def road_area(layout: Layout) -> BaseGeometry:
    """Union of all paved road surfaces (with sidewalks)."""
    return ops.unary_union([r.polygon(r.sidewalk) for r in layout.roads])


def near_roads(layout: Layout, lo: float, hi: float) -> np.ndarray:
    """Pixels between ``lo`` and ``hi`` metres from the edge of an asphalt road."""
    roads = [r for r in layout.roads if r.surface == "asphalt"]
    if not roads:
        return np.zeros(layout.shape, bool)
    outer = burn([r.polygon(r.sidewalk + layout.m(hi)) for r in roads], layout.shape)
    inner = burn([r.polygon(r.sidewalk + layout.m(lo)) for r in roads], layout.shape)
    return outer.astype(bool) & ~inner.astype(bool)
