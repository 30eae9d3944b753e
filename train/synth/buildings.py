"""Buildings and cars: sizes, shapes, roofs, and where they go.

Buildings follow the street grid, line urban streets, front suburban roads and stand
alone in the countryside; cars are re-drawn at every date (unlabelled pseudo-changes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kdmsi_train.synth.geometry import Rect
from kdmsi_train.synth.layout import (
    FIELD,
    GRASS,
    RESIDENTIAL,
    SOIL,
    URBAN,
    Box,
    Layout,
    fits,
    grid_angle,
    near_roads,
    sample_points,
)

# roof palettes: base colour and the spread of its brightness
ROOFS: dict[str, tuple[tuple[float, float, float], float]] = {
    "red_tile": ((0.62, 0.30, 0.22), 0.05),
    "brown_tile": ((0.47, 0.32, 0.26), 0.04),
    "dark": ((0.24, 0.24, 0.26), 0.03),
    "grey_concrete": ((0.57, 0.56, 0.54), 0.05),
    "light_metal": ((0.76, 0.78, 0.80), 0.04),
    "white_membrane": ((0.85, 0.85, 0.83), 0.03),
    "green_metal": ((0.30, 0.42, 0.38), 0.04),
    "gravel": ((0.50, 0.47, 0.42), 0.04),
}
RIBBED = ("light_metal", "green_metal")
WALLS = ((0.72, 0.66, 0.56), (0.80, 0.79, 0.76), (0.55, 0.55, 0.54), (0.56, 0.34, 0.26))
CAR_COLOURS = ((0.85, 0.85, 0.86), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58), (0.62, 0.12, 0.10),
               (0.12, 0.20, 0.45), (0.35, 0.35, 0.36), (0.75, 0.72, 0.65))


def roof_colour(rng: np.random.Generator, name: str) -> tuple[float, float, float]:
    """A jittered colour of the named roof palette."""
    base, jitter = ROOFS[name]
    rgb = np.asarray(base) * rng.uniform(0.85, 1.12) + rng.normal(0, jitter)
    rgb = rgb + rng.normal(0, 0.015, 3)
    return tuple(float(c) for c in np.clip(rgb, 0.05, 0.95))


@dataclass(frozen=True)
class Kind:
    """What buildings of one kind look like (sizes in metres, slopes in degrees)."""

    length: tuple[float, float]
    width: tuple[float, float]
    height: tuple[float, float]
    roofs: tuple[str, ...]  # palettes, repeated to weight them
    shapes: tuple[str, ...]  # roof shapes, repeated to weight them
    wing: float  # probability of an L or T shape
    slope: tuple[float, float] = (25.0, 45.0)


KINDS = {
    "house": Kind((8, 16), (7, 11), (5, 9), ("red_tile", "red_tile", "brown_tile", "dark",
                                             "grey_concrete"),
                  ("gable", "gable", "hip", "hip", "flat"), 0.3),
    "block": Kind((15, 50), (10, 20), (9, 30), ("grey_concrete", "white_membrane", "gravel",
                                                "dark", "red_tile", "light_metal"),
                  ("flat", "flat", "flat", "gable", "hip"), 0.35),
    "barn": Kind((18, 40), (10, 20), (6, 10), ("light_metal", "grey_concrete", "red_tile",
                                               "green_metal"), ("gable",), 0.1, (12.0, 22.0)),
    "warehouse": Kind((25, 40), (15, 30), (8, 14), ("light_metal", "white_membrane",
                                                    "grey_concrete"), ("flat",), 0.0),
    "shed": Kind((4, 8), (3.5, 6), (2.5, 4), ("dark", "grey_concrete", "red_tile", "light_metal"),
                 ("flat", "gable"), 0.0),
}


def make_building(
    rng: np.random.Generator, layout: Layout, x: float, y: float, kind: str, angle: float,
    size: tuple[float, float] | None = None,
) -> Box:
    """A building of ``kind`` (see :data:`KINDS`) centred at (x, y), its length along
    ``angle``; ``size`` (length, width in metres) overrides the kind's random size."""
    k, m = KINDS[kind], layout.m
    length, width = size or (rng.uniform(*k.length), rng.uniform(*k.width))
    main = Rect(x, y, m(length), m(min(width, length)), angle)
    parts = (main, _wing(rng, main)) if size is None and rng.random() < k.wing else (main,)
    palette, roof = str(rng.choice(k.roofs)), str(rng.choice(k.shapes))
    flat_and_big = roof == "flat" and length > 14
    return Box(
        parts=parts,
        height=float(rng.uniform(*k.height)),
        rgb=roof_colour(rng, palette),
        roof=roof,
        slope=float(np.radians(rng.uniform(*k.slope))),
        ribbed=palette in RIBBED,
        extras=_rooftop_units(rng, main, m(1.0)) if flat_and_big and rng.random() < 0.7 else (),
        wall=tuple(float(c) * rng.uniform(0.85, 1.1) for c in WALLS[int(rng.integers(4))]),
    )


def _wing(rng: np.random.Generator, main: Rect) -> Rect:
    """The second arm of an L- or T-shaped building, at one end of the main part."""
    wing_w = rng.uniform(0.45, 0.8) * main.width
    reach = main.width / 2 + rng.uniform(0.4, 1.0) * main.width
    along = rng.choice([-1, 1]) * (main.length / 2 - wing_w / 2)
    if rng.random() < 0.25:  # T shape
        along *= rng.uniform(0, 0.6)
    side = rng.choice([-1, 1])
    centre = main.moved(along, side * reach / 2)
    return Rect(centre.cx, centre.cy, reach, wing_w, main.angle + np.pi / 2)


def _rooftop_units(rng: np.random.Generator, main: Rect, metre: float) -> tuple[Rect, ...]:
    """Ventilation boxes and stair houses on a flat roof."""
    units = []
    for _ in range(int(rng.integers(1, 5))):
        size_l, size_w = rng.uniform(1.5, 4.0) * metre, rng.uniform(1.5, 3.0) * metre
        along = rng.uniform(-0.35, 0.35) * main.length
        across = rng.uniform(-0.3, 0.3) * main.width
        c = main.moved(along, across)
        units.append(Rect(c.cx, c.cy, size_l, size_w, main.angle))
    return tuple(units)


def place_buildings(
    rng: np.random.Generator,
    layout: Layout,
    allowed: np.ndarray,
    kinds: tuple[str, ...],
    attempts: int,
    near: np.ndarray | None = None,
    gap_m: tuple[float, float] = (2.0, 6.0),
) -> list[Box]:
    """Rejection-sample buildings inside ``allowed``; ``near`` biases them towards roads.

    Candidates are drawn in a few rounds from the still free pixels, so that dense
    districts fill up without thousands of rejected tries.
    """
    placed: list[Box] = []
    rounds = min(4, attempts)
    for round_ in range(rounds):
        free = allowed & ~layout.occupied
        n = attempts // rounds + (attempts % rounds if round_ == 0 else 0)
        n_near = int(0.7 * n) if near is not None else 0
        pts = np.concatenate([sample_points(rng, free & near, n_near) if n_near else
                              np.zeros((0, 2)), sample_points(rng, free, n - n_near)])
        for x, y in pts:
            if layout.occupied[int(y), int(x)]:  # taken since this round's draw
                continue
            building = make_building(rng, layout, x, y, str(rng.choice(kinds)),
                                     grid_angle(rng, layout))
            gap = layout.m(rng.uniform(*gap_m))
            if not fits(layout, list(building.parts), allowed, gap):
                building = _shrunk(building, rng.uniform(0.45, 0.75))
                if not fits(layout, list(building.parts), allowed, gap):
                    continue
            placed.append(building)
    return placed


def _shrunk(building: Box, factor: float) -> Box:
    """The same building scaled down about its first part's centre (to fill small gaps)."""
    c = building.parts[0]

    def scale(r: Rect) -> Rect:
        return Rect(c.cx + (r.cx - c.cx) * factor, c.cy + (r.cy - c.cy) * factor,
                    r.length * factor, r.width * factor, r.angle)

    return dataclasses.replace(building, parts=tuple(scale(p) for p in building.parts),
                               extras=tuple(scale(e) for e in building.extras))


def _street_rows(rng: np.random.Generator, layout: Layout, allowed: np.ndarray) -> list[Box]:
    """Terraces of joined buildings along both sides of urban streets."""
    m, placed = layout.m, []
    for road in layout.roads:
        if road.surface != "asphalt" or road.width < m(6.5):
            continue
        for side in (-1, 1):
            depth_m = rng.uniform(9.0, 16.0)
            offset = road.width / 2 + road.sidewalk + m(1.5) + 1.5 + m(depth_m) / 2
            d = rng.uniform(0, m(10.0))
            while d < road.line.length:
                length_m = rng.uniform(8.0, 26.0)
                mid = min(d + m(length_m) / 2, road.line.length - 1.0)
                p, q = road.line.interpolate(mid), road.line.interpolate(mid + 1.0)
                angle = float(np.arctan2(q.y - p.y, q.x - p.x))
                centre = Rect(p.x, p.y, 1, 1, angle).moved(0, side * offset)
                # a pixel shorter than its plot, so neighbours touch but do not overlap
                size = (length_m - 1.5 * layout.pixel_size, depth_m)
                building = make_building(rng, layout, centre.cx, centre.cy, "block", angle, size)
                if rng.random() > 0.12 and fits(layout, list(building.parts), allowed, 0.0):
                    placed.append(building)
                d += m(length_m)
    return placed


def add_buildings(rng: np.random.Generator, layout: Layout) -> None:
    """Dense blocks in urban parcels, houses along streets, farms in the countryside."""
    kind, free = layout.kind, ~layout.occupied
    near = near_roads(layout, 4.0, 22.0)
    area_m2 = layout.shape[0] * layout.shape[1] * layout.pixel_size**2
    per = area_m2 / 65536.0  # attempts are tuned on a 256 m x 256 m scene
    specs = [
        (kind == URBAN, ("block", "block", "block", "house", "warehouse"), 400, (1.0, 3.0)),
        (kind == RESIDENTIAL, ("house", "house", "house", "house", "shed"), 220, (2.0, 6.0)),
        (np.isin(kind, (FIELD, GRASS, SOIL)), ("barn", "house", "shed", "barn"),
         int(rng.integers(0, 25)), (3.0, 10.0)),
    ]
    if (kind == URBAN).any():
        layout.buildings += _street_rows(rng, layout, (kind == URBAN) & free)
    for allowed, kinds, attempts, gap in specs:
        if (allowed & free).any():
            layout.buildings += place_buildings(rng, layout, allowed & free, kinds,
                                                int(attempts * per), near, gap)


# ---------------------------------------------------------------- cars


def place_cars(rng: np.random.Generator, layout: Layout) -> list[Box]:
    """Cars on the asphalt roads and in the parking lots; different at every date."""
    density = {"urban": 1 / 20, "suburban": 1 / 45, "periurban": 1 / 70}.get(layout.style, 1 / 150)
    cars: list[Box] = []
    for road in layout.roads:
        if road.surface != "asphalt" or road.line.length < 2:
            continue
        n = rng.poisson(road.line.length * layout.pixel_size * density * rng.uniform(0.3, 1.5))
        for d in rng.uniform(0, road.line.length, n):
            p, q = road.line.interpolate(d), road.line.interpolate(min(d + 1, road.line.length))
            angle = float(np.arctan2(q.y - p.y, q.x - p.x))
            side = rng.choice([-1, 1])
            lane = Rect(p.x, p.y, 1, 1, angle).moved(0, side * road.width / 4)
            cars.append(_car(rng, layout, lane.cx, lane.cy, angle + (np.pi if side < 0 else 0)))
    for patch in layout.patches:
        fill = rng.uniform(0.1, 0.9)
        for stall in patch.stalls:
            if rng.random() < fill:
                angle = stall.angle + (np.pi if rng.random() < 0.5 else 0.0)
                cars.append(_car(rng, layout, stall.cx, stall.cy, angle))
    return cars


def _car(rng: np.random.Generator, layout: Layout, x: float, y: float, angle: float) -> Box:
    """A car facing ``angle``: a 1.5 m box whose windows the renderer darkens."""
    rgb = np.asarray(CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]) * rng.uniform(0.85, 1.1)
    body = Rect(x, y, layout.m(rng.uniform(4.0, 4.9)), layout.m(rng.uniform(1.7, 1.95)), angle)
    rgb = tuple(float(c) for c in np.clip(rgb, 0, 1))
    return Box((body,), 1.5, rgb, "car", wall=rgb)
