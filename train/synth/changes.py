"""True changes between the two dates: what the change mask marks.

Only three kinds of change are labelled, as in the public building-change data sets:
new buildings, demolished buildings and new paved areas. Everything else that differs
between the dates (crops, shadows, cars, light) is a pseudo-change.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from shapely import ops
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from kdmsi_train.synth.buildings import make_building, place_buildings
from kdmsi_train.synth.geometry import burn
from kdmsi_train.synth.landscape import parking_lot
from kdmsi_train.synth.layout import (
    URBAN,
    Box,
    Layout,
    Patch,
    Road,
    claim,
    fits,
    road_area,
    sample_points,
)

RATE = 14.0  # mean number of extra change events in a 256 m x 256 m scene
KINDS = ("new building", "demolition", "new pavement")
"""The kinds of change event, as they run forwards (before -> after); the code of each in a
scene's kind raster is its index + 1 (:class:`~kdmsi_train.synth.scene.ScenePair`)."""
Event = Callable[[np.random.Generator, Layout, Layout], list[BaseGeometry]]


def make_changes(rng: np.random.Generator, before: Layout, rate: float = RATE
                 ) -> tuple[Layout, list[tuple[BaseGeometry, int]]]:
    """The layout of the second date and the footprints of what changed, each with the code
    of its kind (:data:`KINDS`), so that a model's misses can be told apart by kind.

    Some scenes have no change at all; the others a few events whose number grows with
    the scene area, so that about half of the 128-pixel tiles stay unchanged at the
    default ``rate`` (mean events per 256 m x 256 m).
    """
    after = before.copy()
    per = before.shape[0] * before.shape[1] * before.pixel_size**2 / 65536.0
    n = 0 if rng.random() < 0.15 else 1 + rng.poisson(rate * per)
    events: tuple[Event, ...] = (_new_buildings, _demolition, _new_pavement)
    changed: list[tuple[BaseGeometry, int]] = []
    for _ in range(n):
        code = int(rng.choice(3, p=[0.45, 0.3, 0.25]))
        changed += [(g, code + 1) for g in events[code](rng, before, after) if not g.is_empty]
    return after, changed


def _buildable(layout: Layout) -> np.ndarray:
    """Free pixels outside forests: where a new building or lot may appear."""
    return layout.open_land & ~layout.occupied


def _new_buildings(rng: np.random.Generator, before: Layout, after: Layout) -> list[BaseGeometry]:
    """One building or a small development on open land, sometimes on a t1 building site."""
    allowed = _buildable(after)
    placed = []
    for x, y in sample_points(rng, allowed, 3):
        region = _disc(allowed, x, y, after.m(rng.uniform(15.0, 60.0)))
        urban = after.kind[int(y), int(x)] == URBAN
        kinds = ("block", "warehouse") if urban else ("house", "house", "house", "barn",
                                                      "warehouse", "shed")
        placed = place_buildings(rng, after, region, kinds, int(rng.integers(1, 10)),
                                 gap_m=(2.0, 6.0))
        if placed:
            break
    after.buildings += placed
    for b in placed:
        if rng.random() < 0.3:  # the plot was already a building site at the first date
            site = b.footprint().buffer(after.m(rng.uniform(2.0, 5.0)), join_style="mitre")
            if claim(before, site, before.open_land):
                before.patches.append(Patch(site, "soil"))
                after.patches.append(Patch(site, "soil"))
    return [b.footprint() for b in placed]


def _disc(mask: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
    """``mask`` limited to a disc, computed in the disc's window only."""
    h, w = mask.shape
    x0, x1 = max(int(x - radius), 0), min(int(x + radius) + 1, w)
    y0, y1 = max(int(y - radius), 0), min(int(y + radius) + 1, h)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = mask[y0:y1, x0:x1] & ((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2
                                              < radius**2)
    return out


def _demolition(rng: np.random.Generator, before: Layout, after: Layout) -> list[BaseGeometry]:
    """A building replaced by bare soil, rubble or a gravel-covered site; sometimes rebuilt."""
    if not after.buildings:
        return []
    centres = np.array([(b.parts[0].cx, b.parts[0].cy) for b in after.buildings])
    first = int(rng.integers(len(after.buildings)))
    reach = after.m(rng.uniform(0.0, 40.0)) if rng.random() < 0.35 else 0.0
    near = np.hypot(*(centres - centres[first]).T) <= reach
    near[first] = True
    chosen = set(np.flatnonzero(near)[:5].tolist()) | {first}
    victims = [b for i, b in enumerate(after.buildings) if i in chosen]
    after.buildings = [b for i, b in enumerate(after.buildings) if i not in chosen]
    return [_clear(rng, after, victim) for victim in victims]


def _clear(rng: np.random.Generator, after: Layout, victim: Box) -> BaseGeometry:
    """Replace one building by a bare site, or once in a while by a different building."""
    footprint = victim.footprint()
    site = footprint.buffer(after.m(rng.uniform(0.0, 1.0)), join_style="mitre")
    after.patches.append(Patch(site, str(rng.choice(["soil", "rubble", "rubble", "gravel"]))))
    changed = site.difference(_surroundings(after, site))
    if rng.random() < 0.25:
        c = footprint.centroid
        new = make_building(rng, after, c.x, c.y, "house" if victim.height < 9 else "block",
                            victim.parts[0].angle + rng.normal(0, 0.05))
        after.occupied &= ~burn([site], after.shape).astype(bool)
        if fits(after, list(new.parts), np.ones(after.shape, bool), 0.0):
            after.buildings.append(new)
            changed = changed.union(new.footprint())
    return changed


def _surroundings(layout: Layout, site: BaseGeometry) -> BaseGeometry:
    """Buildings and roads that touch ``site``: they did not change, so the mask spares them."""
    x0, y0, x1, y1 = site.bounds
    reach = max(x1 - x0, y1 - y0)
    near = [b.footprint() for b in layout.buildings
            if abs(b.parts[0].cx - (x0 + x1) / 2) < 2 * reach + 100
            and abs(b.parts[0].cy - (y0 + y1) / 2) < 2 * reach + 100]
    roads = [r.polygon(r.sidewalk) for r in layout.roads]
    return ops.unary_union([g for g in near + roads if g.intersects(site)])


def _new_pavement(rng: np.random.Generator, before: Layout, after: Layout) -> list[BaseGeometry]:
    """A new parking lot on open land, or a new access road branching off a road."""
    roads = [r for r in before.roads if r.surface == "asphalt"]
    if roads and rng.random() < 0.45:
        return _new_road(rng, after, roads[int(rng.integers(len(roads)))])
    allowed = _buildable(after)
    for (x, y), scale in zip(sample_points(rng, allowed, 8), np.linspace(1.0, 0.4, 8),
                             strict=False):
        lot = parking_lot(rng, after, x, y, after.angle + rng.choice([0.0, np.pi / 2]),
                          scale * rng.uniform(15.0, 50.0), scale * rng.uniform(12.0, 35.0))
        if claim(after, lot.geom, allowed):
            after.patches.append(lot)
            return [lot.geom]
    return []


def _new_road(rng: np.random.Generator, after: Layout, road: Road) -> list[BaseGeometry]:
    """A straight branch leaving ``road`` at right angles, 30-120 m long."""
    d = rng.uniform(0, road.line.length)
    p, q = road.line.interpolate(d), road.line.interpolate(min(d + 1.0, road.line.length))
    tx, ty = q.x - p.x, q.y - p.y
    norm = np.hypot(tx, ty)
    if norm == 0:
        return []
    side = rng.choice([-1, 1])
    nx, ny = -ty / norm * side, tx / norm * side
    start = road.width / 2 + road.sidewalk
    width = after.m(rng.uniform(5.0, 9.0))
    existing = road_area(after)
    margin = existing.buffer(after.m(1.5) + 1.0)
    allowed = after.open_land
    for length in after.m(rng.uniform(30.0, 120.0)) * np.array([1.0, 0.6, 0.35]):
        line = LineString([(p.x + nx * start, p.y + ny * start),
                           (p.x + nx * (start + length), p.y + ny * (start + length))])
        paved = line.buffer(width / 2, cap_style="flat")
        if claim(after, paved.difference(margin), allowed):
            after.roads.append(Road(line, width, "asphalt", 0.0, float(rng.uniform(0.2, 0.3)),
                                    LineString()))
            return [paved.difference(existing)]
    return []
