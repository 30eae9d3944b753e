"""A random landscape: land-cover parcels, water, forest, roads, yards and trees.

Each scene draws a style (urban, suburban, peri-urban, rural, forest) that weights its
land cover, street pattern and building density, so the scenes of a data set differ.
"""

from __future__ import annotations

import numpy as np
from shapely import ops
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.geometry.base import BaseGeometry

from kdmsi_train.synth.buildings import add_buildings
from kdmsi_train.synth.geometry import Rect, bezier, burn
from kdmsi_train.synth.layout import (
    FIELD,
    FOREST,
    GRASS,
    RESIDENTIAL,
    SOIL,
    URBAN,
    Layout,
    Patch,
    Road,
    Tree,
    claim,
    grid_angle,
    near_roads,
    sample_points,
)
from kdmsi_train.synth.noise import box_blur, fbm, smooth_field, worley

# land-cover weights of each scene style: URBAN, RESIDENTIAL, FIELD, GRASS, SOIL, FOREST
STYLES: dict[str, tuple[float, ...]] = {
    "urban": (0.55, 0.25, 0.0, 0.1, 0.05, 0.05),
    "suburban": (0.1, 0.55, 0.05, 0.15, 0.05, 0.1),
    "periurban": (0.15, 0.25, 0.25, 0.15, 0.1, 0.1),
    "rural": (0.0, 0.05, 0.6, 0.2, 0.05, 0.1),
    "forest": (0.0, 0.05, 0.15, 0.15, 0.05, 0.6),
}
STYLE_WEIGHTS = {"urban": 0.2, "suburban": 0.25, "periurban": 0.25, "rural": 0.2, "forest": 0.1}
# probability that a style's roads form a grid
GRID_ROADS = {"urban": 1.0, "suburban": 0.9, "periurban": 0.5, "rural": 0.1, "forest": 0.0}


def make_layout(rng: np.random.Generator, shape: tuple[int, int], pixel_size: float) -> Layout:
    """A random scene: style, parcels, water, forest, roads, buildings, patches and trees."""
    style = str(rng.choice(list(STYLE_WEIGHTS), p=list(STYLE_WEIGHTS.values())))
    layout = _ground(rng, shape, pixel_size, style)
    _add_roads(rng, layout)
    _add_static_patches(rng, layout)
    add_buildings(rng, layout)
    _add_trees(rng, layout)
    return layout


# ---------------------------------------------------------------- ground


def _ground(rng: np.random.Generator, shape: tuple[int, int], px: float, style: str) -> Layout:
    """Voronoi parcels with a land-cover kind each, then water and forest masks."""
    h, w = shape
    size_m = rng.uniform(45.0, 120.0)
    n = int(np.clip(h * w * px * px / size_m**2, 3, 48))
    ids = _voronoi(rng, shape, n)
    kinds = rng.choice(6, size=n, p=np.asarray(STYLES[style]) / sum(STYLES[style]))
    angle = float(rng.uniform(0, np.pi / 2))
    crop_angle = angle + rng.choice([0.0, np.pi / 2], size=n) + rng.normal(0, 0.05, n)
    crop_angle = np.where(rng.random(n) < 0.3, rng.uniform(0, np.pi, n), crop_angle)
    textures = {
        "fine": fbm(rng, shape, 6.0, 1.0, 0.7),
        "mid": fbm(rng, shape, 32.0, 4.0),
        "low": fbm(rng, shape, 160.0, 16.0),
        "patch": fbm(rng, shape, 64.0, 4.0, 0.6),
    }
    layout = Layout(
        shape=shape,
        pixel_size=px,
        style=style,
        angle=angle,
        parcel_ids=ids,
        parcel_kind=kinds,
        parcel_angle=crop_angle,
        parcel_period=rng.uniform(1.5, 5.0, n) / px,
        parcel_tone=(rng.normal(1.0, 0.07, (n, 1)) + rng.normal(0, 0.015, (n, 3))).astype(
            np.float32),
        water=np.zeros(shape, bool),
        forest=np.zeros(shape, bool),
        textures=textures,
        occupied=np.zeros(shape, bool),
        conifer_share=float(rng.uniform(0.0, 0.6)),
    )
    if rng.random() < 0.3:
        layout.water = _water(rng, layout)
    layout.forest = _forest(rng, layout) & ~layout.water
    if layout.forest.any():
        cell = layout.m(rng.uniform(4.0, 7.0))
        layout.textures.update(zip(("crown_d", "crown_dx", "crown_dy", "crown_id"),
                                   worley(rng, shape, cell), strict=True))
    layout.occupied |= layout.water | layout.forest | (layout.kind == FOREST)
    return layout


def _voronoi(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Parcel index of every pixel: nearest of ``n`` random seeds, borders slightly bent."""
    h, w = shape
    seeds = rng.random((n, 2)) * (w, h)
    warp = rng.uniform(1.0, 8.0)
    xs = np.arange(w, dtype=np.float32)[None, :] + warp * smooth_field(rng, shape, 40.0)
    ys = np.arange(h, dtype=np.float32)[:, None] + warp * smooth_field(rng, shape, 40.0)
    best = np.full(shape, np.inf, np.float32)
    ids = np.zeros(shape, np.int16)
    for i, (sx, sy) in enumerate(seeds):
        d = (xs - sx) ** 2 + (ys - sy) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        ids[closer] = i
    return ids


def _water(rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """A meandering river across the scene or a lake with an irregular shore."""
    h, w = layout.shape
    if rng.random() < 0.6:
        line = bezier(_edge_to_edge(rng, w, h, bends=2))
        width = layout.m(rng.uniform(12.0, 40.0))
        return burn([line.buffer(width / 2)], layout.shape).astype(bool)
    cx, cy = rng.random(2) * (w, h)
    radius = layout.m(rng.uniform(25.0, 70.0))
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
    return d + 0.35 * layout.textures["mid"] < 1.0


def _forest(rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """Forest parcels with ragged edges, plus groves in grassland."""
    forest = (layout.kind == FOREST).astype(np.float32)
    soft = box_blur(forest, max(2, int(layout.m(3.0)))) + 0.25 * layout.textures["mid"]
    groves = (layout.kind == GRASS) & (layout.textures["low"] + 0.3 * layout.textures["mid"]
                                       > rng.uniform(1.0, 1.8))
    return (soft > 0.5) | groves


def _edge_to_edge(rng: np.random.Generator, w: int, h: int, bends: int) -> list[tuple]:
    """Control points of a curve entering on one side of the image and leaving on another."""
    def on_edge(side: int) -> tuple[float, float]:
        t = rng.uniform(0.1, 0.9)
        return [(t * w, -5.0), (w + 5.0, t * h), (t * w, h + 5.0), (-5.0, t * h)][side]

    a, b = rng.choice(4, size=2, replace=False)
    inner = [tuple(rng.uniform(0.15, 0.85, 2) * (w, h)) for _ in range(bends)]
    return [on_edge(int(a)), *inner, on_edge(int(b))]


# ---------------------------------------------------------------- roads


def _add_roads(rng: np.random.Generator, layout: Layout) -> None:
    """A street grid in built-up styles, free straight or curved roads, dirt tracks."""
    h, w = layout.shape
    lines: list[tuple[LineString, float, str]] = []
    if rng.random() < GRID_ROADS[layout.style]:
        lines += _grid_lines(rng, layout)
    for _ in range(int(rng.integers(0 if lines else 1, 3))):
        if rng.random() < 0.5:
            line = bezier(_edge_to_edge(rng, w, h, bends=int(rng.integers(1, 3))))
        else:
            line = _straight(rng, w, h, rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4) * min(w, h))
        lines.append((line, rng.uniform(5.0, 10.0), "asphalt"))
    if layout.style in ("rural", "periurban", "forest"):
        for _ in range(int(rng.integers(0, 3))):
            a = layout.angle + rng.choice([0.0, np.pi / 2])
            line = _straight(rng, w, h, a, rng.uniform(-0.45, 0.45) * min(w, h))
            lines.append((line, rng.uniform(2.5, 4.0), "dirt"))
    sidewalk = {"urban": 2.5, "suburban": 1.5, "periurban": 1.0}.get(layout.style, 0.0)
    for line, width_m, surface in lines:
        road = _road(rng, layout, line, width_m, surface, sidewalk)
        if not layout.water.any() or _dry(layout, road):
            layout.roads.append(road)
    if layout.roads:
        area = burn([r.polygon(r.sidewalk + layout.m(1.5)) for r in layout.roads], layout.shape)
        layout.occupied |= area.astype(bool)
        paved = burn([r.polygon(r.sidewalk + 1.0) for r in layout.roads], layout.shape)
        layout.forest &= ~paved.astype(bool)  # roads cut through forests


def _dry(layout: Layout, road: Road) -> bool:
    """Whether a road mostly stays out of the water: it may cross a river, not follow it."""
    paved = burn([road.polygon()], layout.shape).astype(bool)
    return (paved & layout.water).sum() <= 0.15 * paved.sum()


def _grid_lines(rng: np.random.Generator, layout: Layout) -> list[tuple[LineString, float, str]]:
    """Streets along the scene's two grid directions, some of them only partly built."""
    h, w = layout.shape
    spacing = layout.m(rng.uniform(55.0, 120.0))
    out = []
    for direction in (layout.angle, layout.angle + np.pi / 2):
        offset = rng.uniform(0, spacing)
        for c in np.arange(-max(h, w), max(h, w), spacing) + offset:
            line = _straight(rng, w, h, direction, c)
            if line.is_empty or rng.random() < 0.15:
                continue
            if rng.random() < 0.25:  # a dead end or a street that starts inside the scene
                t = np.sort(rng.uniform(0, line.length, 2))
                line = ops.substring(line, float(t[0]), float(max(t[1], t[0] + spacing)))
            main = rng.random() < 0.25
            out.append((line, rng.uniform(12.0, 20.0) if main else rng.uniform(6.5, 11.0),
                        "asphalt"))
    return out


def _straight(rng: np.random.Generator, w: int, h: int, angle: float, offset: float) -> LineString:
    """The straight line at ``angle`` that passes ``offset`` pixels from the centre, clipped."""
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    c = np.array([w / 2, h / 2]) + offset * n
    far = 2.0 * (w + h)
    line = LineString([tuple(c - far * d), tuple(c + far * d)])
    clipped = line.intersection(box(-10, -10, w + 10, h + 10))
    return clipped if isinstance(clipped, LineString) else LineString()


def _road(
    rng: np.random.Generator,
    layout: Layout,
    line: LineString,
    width_m: float,
    surface: str,
    sidewalk_m: float,
) -> Road:
    """A road with its lane markings: centre dashes from 6.5 m, edge lines from 10 m."""
    width = layout.m(width_m)
    marks: list[BaseGeometry] = []
    if surface == "asphalt" and width_m >= 6.5 and rng.random() < 0.85:
        dash, gap = layout.m(3.0), layout.m(rng.uniform(4.0, 9.0))
        starts = np.arange(rng.uniform(0, gap), line.length, dash + gap)
        marks += [ops.substring(line, float(s), float(s + dash)) for s in starts]
    if surface == "asphalt" and width_m >= 10.0:
        for side in (-1, 1):
            edge = line.offset_curve(side * (width / 2 - layout.m(0.7)))
            if not edge.is_empty:
                marks.append(edge)
    markings = MultiLineString([]) if not marks else ops.unary_union(marks).buffer(0.6)
    tone = rng.uniform(0.22, 0.42) if surface == "asphalt" else rng.uniform(0.5, 0.62)
    sidewalk = layout.m(sidewalk_m) if surface == "asphalt" and width_m >= 6.5 else 0.0
    return Road(line, width, surface, sidewalk, tone, markings)


# ---------------------------------------------------------------- patches


def parking_lot(
    rng: np.random.Generator, layout: Layout, x: float, y: float, angle: float,
    length_m: float, width_m: float,
) -> Patch:
    """An asphalt or concrete lot with rows of painted stalls facing each other."""
    m = layout.m
    lot = Rect(x, y, m(length_m), m(width_m), angle)
    stall_w, stall_d, aisle = m(2.5), m(5.0), m(6.0)
    lines, stalls = [], []
    across = -lot.width / 2 + m(1.0)
    facing = 1
    while across + stall_d <= lot.width / 2 - m(0.5):
        for along in np.arange(-lot.length / 2 + m(1.0), lot.length / 2 - stall_w, stall_w):
            c = lot.moved(along + stall_w / 2, across + stall_d / 2)
            stalls.append(Rect(c.cx, c.cy, stall_d * 0.9, stall_w * 0.75, angle + np.pi / 2))
            a = lot.moved(along, across)
            b = lot.moved(along, across + stall_d)
            lines.append(LineString([(a.cx, a.cy), (b.cx, b.cy)]))
        across += stall_d + (aisle if facing > 0 else 0.0)
        facing = -facing
    material = "asphalt" if rng.random() < 0.75 else "concrete"
    painted = ops.unary_union(lines).buffer(0.55) if lines else None
    return Patch(lot.polygon(), material, painted, tuple(stalls))


def _add_static_patches(rng: np.random.Generator, layout: Layout) -> None:
    """Parking lots, pools, bare or rubble patches and gravel yards present at both dates.

    They make bare soil and fresh asphalt ordinary, so a change is the appearance of
    such a surface, not the surface itself.
    """
    kind = layout.kind
    built = np.isin(kind, (URBAN, RESIDENTIAL)) & ~layout.occupied
    for x, y in sample_points(rng, built, int(rng.integers(0, 4))):
        lot = parking_lot(rng, layout, x, y, grid_angle(rng, layout), rng.uniform(15, 45),
                          rng.uniform(12, 35))
        if claim(layout, lot.geom, built):
            layout.patches.append(lot)
    gardens = (kind == RESIDENTIAL) & ~layout.occupied
    for x, y in sample_points(rng, gardens, int(rng.integers(0, 6))):
        pool = Rect(x, y, layout.m(rng.uniform(4, 12)), layout.m(rng.uniform(3, 5)),
                    grid_angle(rng, layout))
        if claim(layout, pool.polygon(), gardens):
            layout.patches.append(Patch(pool.polygon(), "pool"))
    open_land = np.isin(kind, (URBAN, RESIDENTIAL, GRASS, FIELD)) & ~layout.occupied
    for x, y in sample_points(rng, open_land, int(rng.integers(0, 4))):
        size = layout.m(rng.uniform(10, 40))
        geom = _blob(rng, x, y, size, grid_angle(rng, layout, 0.3))
        material = str(rng.choice(["soil", "rubble", "gravel", "soil"]))
        if claim(layout, geom, open_land):
            layout.patches.append(Patch(geom, material))


def _blob(rng: np.random.Generator, x: float, y: float, size: float, angle: float) -> Polygon:
    """A roughly rectangular patch with irregular edges."""
    r = Rect(x, y, size, size * rng.uniform(0.5, 1.0), angle).polygon()
    return r.buffer(size * 0.08).simplify(size * 0.03)


# ---------------------------------------------------------------- trees


def _add_trees(rng: np.random.Generator, layout: Layout) -> None:
    """Garden and street trees, hedgerows along parcel borders, solitary field trees."""
    m = layout.m
    no_trunk = layout.water | layout.forest
    no_trunk |= burn([r.polygon() for r in layout.roads], layout.shape).astype(bool)
    no_trunk |= burn([b.footprint() for b in layout.buildings], layout.shape).astype(bool)
    kind = layout.kind
    gardens = (kind == RESIDENTIAL) & ~layout.occupied
    street = near_roads(layout, 0.5, 3.5) & np.isin(kind, (URBAN, RESIDENTIAL)) & ~no_trunk
    border = layout.borders & np.isin(kind, (FIELD, GRASS, SOIL)) & ~layout.occupied
    edge = _near(layout.forest, int(m(4.0))) & ~layout.forest & ~layout.occupied
    per = layout.shape[0] * layout.shape[1] * layout.pixel_size**2 / 65536.0
    counts = [
        (gardens, int(rng.uniform(60, 200) * per * gardens.mean() * 3), (2.0, 5.0)),
        (street, int(rng.uniform(0, 120) * per * street.mean() * 8), (2.5, 4.0)),
        (border, int(rng.uniform(0, 300) * per * border.mean() * 6), (2.0, 4.5)),
        (edge, int(rng.uniform(20, 120) * per * edge.mean() * 4), (2.0, 4.0)),
        (np.isin(kind, (FIELD, GRASS)) & ~layout.occupied, int(rng.integers(0, 12) * per),
         (3.0, 6.0)),
    ]
    for mask, n, (r_lo, r_hi) in counts:
        for x, y in sample_points(rng, mask, n):
            r = m(rng.uniform(r_lo, r_hi))
            layout.trees.append(Tree(float(x), float(y), float(r), float(rng.uniform(5, 14)),
                                     float(rng.random()),
                                     bool(rng.random() < layout.conifer_share)))
    crowns = [t.crown(0.7) for t in layout.trees]
    layout.occupied |= burn(crowns, layout.shape).astype(bool)


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within about ``radius`` of ``mask``."""
    return box_blur(mask.astype(np.float32), max(radius, 1)) > 0.01
