"""Turn a layout into an image as seen at one date: season, sun, sensor.

Everything that varies here (vegetation colour, crop state, shadows, haze, gain, noise)
is a pseudo-change: it differs between the two dates of a pair but is never labelled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import affinity

from kdmsi_train.synth.geometry import Rect, burn
from kdmsi_train.synth.layout import FIELD, GRASS, RESIDENTIAL, SOIL, URBAN, Box, Layout, Tree
from kdmsi_train.synth.noise import box_blur, fbm, shift, shift_mask, smooth_field

# colours are display reflectances in [0, 1]
GRASS_GREEN = np.array([0.29, 0.40, 0.19], np.float32)
GRASS_DRY = np.array([0.60, 0.55, 0.38], np.float32)
SOIL_RGB = np.array([0.54, 0.45, 0.35], np.float32)
CONCRETE = np.array([0.60, 0.59, 0.56], np.float32)
ASPHALT = np.array([0.33, 0.33, 0.34], np.float32)
DIRT = np.array([0.62, 0.55, 0.44], np.float32)
SHADOW = np.array([0.36, 0.40, 0.50], np.float32)  # what is left of a surface in shadow
DECIDUOUS = (np.array([0.17, 0.30, 0.12], np.float32), np.array([0.27, 0.38, 0.16], np.float32))
CONIFER = np.array([0.11, 0.19, 0.13], np.float32)
AUTUMN = np.array([[0.50, 0.42, 0.17], [0.45, 0.27, 0.13], [0.36, 0.32, 0.25]], np.float32)
WATERS = ((0.09, 0.16, 0.19), (0.15, 0.23, 0.20), (0.30, 0.29, 0.21), (0.12, 0.18, 0.26))
MATERIALS = {  # base colour, fine texture, mid texture
    "asphalt": ((0.30, 0.30, 0.31), 0.07, 0.05),
    "concrete": ((0.62, 0.61, 0.58), 0.05, 0.04),
    "soil": ((0.56, 0.46, 0.36), 0.10, 0.12),
    "rubble": ((0.55, 0.52, 0.48), 0.30, 0.15),
    "gravel": ((0.63, 0.61, 0.57), 0.12, 0.05),
    "pool": ((0.33, 0.66, 0.76), 0.02, 0.02),
}
# crop states: colour, row contrast, tramlines
CROPS = {
    "green": ((0.25, 0.39, 0.16), 0.04, True),
    "young": ((0.40, 0.43, 0.27), 0.12, True),
    "ripe": ((0.68, 0.60, 0.38), 0.03, True),
    "rapeseed": ((0.74, 0.70, 0.24), 0.02, True),
    "stubble": ((0.74, 0.68, 0.52), 0.06, False),
    "ploughed": ((0.43, 0.34, 0.26), 0.12, False),
    "bare": ((0.56, 0.47, 0.37), 0.03, False),
}
SEASONS = {
    "spring": {"green": 0.35, "young": 0.3, "ploughed": 0.2, "bare": 0.1, "rapeseed": 0.05},
    "summer": {"green": 0.3, "ripe": 0.35, "stubble": 0.15, "young": 0.1, "rapeseed": 0.1},
    "autumn": {"stubble": 0.3, "ploughed": 0.35, "bare": 0.15, "green": 0.2},
}
DRYNESS = {"spring": (0.0, 0.4), "summer": (0.2, 1.0), "autumn": (0.1, 0.8)}
AMBIENT = 0.35  # share of a surface's brightness that skylight gives it in full shadow


@dataclass(frozen=True)
class Look:
    """Season, sun and sensor of one date."""

    season: str
    sun_azimuth: float  # radians clockwise from north
    sun_elevation: float  # radians
    dryness: float  # 0 lush green vegetation .. 1 dry
    autumn: float  # 0 green foliage .. 1 full autumn colours
    crops: tuple[str, ...]  # crop state of every parcel
    water_rgb: tuple[float, float, float]
    gain: tuple[float, float, float]
    gamma: float
    haze: float
    haze_rgb: tuple[float, float, float]
    noise: float
    blur: bool
    lean: tuple[float, float] = (0.0, 0.0)  # relief displacement, metres per metre of height
    texture_seed: int = 0  # of the fine vegetation texture that differs between dates

    @property
    def sun(self) -> np.ndarray:
        """Unit vector towards the sun in image axes (x right, y down, z up)."""
        az, el = self.sun_azimuth, self.sun_elevation
        return np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])

    def shadow_step(self, pixel_size: float) -> tuple[float, float]:
        """Shadow displacement in pixels per metre of object height."""
        s = self.sun
        k = 1.0 / (np.tan(self.sun_elevation) * pixel_size * np.hypot(s[0], s[1]))
        return float(-s[0] * k), float(-s[1] * k)


def make_looks(rng: np.random.Generator, layout: Layout) -> tuple[Look, Look]:
    """Two independent dates; crop states persist with a season-dependent probability."""
    first = _look(rng, layout, None)
    return first, _look(rng, layout, first)


def _look(rng: np.random.Generator, layout: Layout, other: Look | None) -> Look:
    """One date; its fields keep the crops of ``other`` with some probability."""
    season = str(rng.choice(list(SEASONS)))
    names, p = zip(*SEASONS[season].items(), strict=True)
    crops = rng.choice(names, size=len(layout.parcel_kind), p=p)
    if other is not None:
        keep = rng.random(len(crops)) < (0.5 if season == other.season else 0.15)
        crops = np.where(keep, np.asarray(other.crops), crops)
    warm, tint = rng.normal(0.0, 0.04), rng.normal(0.0, 0.01)  # white balance
    gain = rng.uniform(0.85, 1.15) * np.array([1 + warm, 1 + tint, 1 - warm])
    return Look(
        season=season,
        sun_azimuth=float(np.radians(rng.uniform(110, 250))),
        sun_elevation=float(np.radians(rng.uniform(30, 65))),
        dryness=float(rng.uniform(*DRYNESS[season])),
        autumn=float(rng.uniform(0.2, 1.0) if season == "autumn" and rng.random() < 0.7
                     else 0.0),
        crops=tuple(str(c) for c in crops),
        water_rgb=tuple(float(c) for c in WATERS[int(rng.integers(len(WATERS)))]),
        gain=tuple(float(g) for g in gain),
        gamma=float(rng.uniform(0.85, 1.15)),
        haze=float(rng.uniform(0.0, 0.12)),
        haze_rgb=tuple(float(c) for c in np.clip(rng.normal([0.70, 0.73, 0.78], 0.02), 0, 1)),
        noise=float(rng.uniform(0.004, 0.018)),
        blur=bool(rng.random() < 0.3),
        lean=_lean(rng),
        texture_seed=int(rng.integers(2**31)),
    )


def _lean(rng: np.random.Generator) -> tuple[float, float]:
    """Off-nadir view: tall objects lean away from the image centre, walls show."""
    if rng.random() < 0.3:
        return 0.0, 0.0
    angle, size = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.08)
    return float(size * np.cos(angle)), float(size * np.sin(angle))


def render(layout: Layout, look: Look, cars: list[Box]) -> np.ndarray:
    """The scene at one date as a float (3, H, W) reflectance image, before the sensor."""
    living = _grown(layout, look)
    img = _ground(living, look)
    _draw_water(img, layout, look)
    _draw_patches(img, layout)
    _draw_roads(img, layout)
    shade = _shadows(layout, look, cars)
    img *= 1.0 - shade[None] * (1.0 - SHADOW[:, None, None])
    _draw_canopy(img, living, look)
    _draw_boxes(img, layout, layout.buildings + cars, look)
    _draw_trees(img, living, look)
    return img


def _grown(layout: Layout, look: Look) -> Layout:
    """The layout with a fine texture partly renewed for this date.

    Grass, crops and leaves do not keep their exact pixel pattern from one year to the
    next; without this, any texture mismatch would betray a change.
    """
    renewed = fbm(np.random.default_rng(look.texture_seed), layout.shape, 6.0, 1.0, 0.7)
    fine = 0.6 * layout.textures["fine"] + 0.8 * renewed
    return dataclasses.replace(layout, textures={**layout.textures, "fine": fine})


def sensor(
    rng: np.random.Generator, img: np.ndarray, look: Look, offset: tuple[float, float]
) -> np.ndarray:
    """Illumination, gamma, haze, blur, misregistration and noise; quantised to uint8."""
    shape = img.shape[1:]
    light = 1.0 + 0.06 * smooth_field(rng, shape, 220.0)
    img = img * np.asarray(look.gain, np.float32)[:, None, None] * light
    img = np.clip(img, 0.0, 1.0) ** look.gamma
    hz = look.haze * np.clip(0.7 + 0.4 * smooth_field(rng, shape, 180.0), 0.0, 1.0)
    img = img * (1 - hz) + hz * np.asarray(look.haze_rgb, np.float32)[:, None, None]
    if look.blur:
        img = 0.5 * img + 0.5 * box_blur(img, 1)
    if offset != (0.0, 0.0):
        img = shift(img, *offset)
    img = img + look.noise * rng.standard_normal(img.shape, np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- ground


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` -> ``b`` (3,) by per-pixel weights ``t`` (N,) into (3, N)."""
    return a[:, None] + (b - a)[:, None] * t[None]


def _ground(layout: Layout, look: Look) -> np.ndarray:
    """Parcel surfaces: grass, lawns, crop rows, bare soil, urban pavement."""
    kind = layout.kind
    img = np.empty((3, *layout.shape), np.float32)
    surfaces = {GRASS: _grass, RESIDENTIAL: _lawn, URBAN: _pavement, FIELD: _fields}
    for k in np.unique(layout.parcel_kind):
        where = kind == k
        img[:, where] = surfaces.get(int(k), _soil)(layout, look, where)
    edges = layout.borders & np.isin(kind, (FIELD, GRASS, SOIL))
    img[:, edges] *= 0.88
    img *= np.moveaxis(layout.parcel_tone[layout.parcel_ids], -1, 0)
    return img


def _grass(layout: Layout, look: Look, where: np.ndarray) -> np.ndarray:
    """Meadow: green to straw depending on the season, patchy."""
    t = layout.textures
    dry = np.clip(look.dryness + 0.2 * t["patch"][where] + 0.1 * t["low"][where], 0.0, 1.0)
    return _lerp(GRASS_GREEN, GRASS_DRY, dry) * (1 + 0.07 * t["mid"][where]
                                                  + 0.09 * t["fine"][where])


def _lawn(layout: Layout, look: Look, where: np.ndarray) -> np.ndarray:
    """Gardens: watered, so greener than meadows, with mowing patches."""
    t = layout.textures
    dry = np.clip(0.6 * look.dryness + 0.15 * t["patch"][where], 0.0, 1.0)
    return _lerp(GRASS_GREEN, GRASS_DRY, dry) * (1 + 0.10 * t["patch"][where]
                                                  + 0.08 * t["fine"][where])


def _soil(layout: Layout, look: Look, where: np.ndarray) -> np.ndarray:
    """Bare earth, lighter when dry."""
    t = layout.textures
    f = 1 + 0.12 * t["mid"][where] + 0.08 * t["fine"][where] + 0.15 * look.dryness
    return SOIL_RGB[:, None] * f


def _pavement(layout: Layout, look: Look, where: np.ndarray) -> np.ndarray:
    """Urban open space: concrete and asphalt yards with some green squares."""
    t = layout.textures
    dark = np.clip(t["low"][where] * 2.0 - 0.2, 0.0, 1.0)
    paved = _lerp(CONCRETE * 0.9, ASPHALT, dark) * (1 + 0.05 * t["fine"][where]
                                                     + 0.04 * t["mid"][where])
    green = t["patch"][where] > 1.0
    paved[:, green] = _lawn(layout, look, where)[:, green]
    return paved


def _fields(layout: Layout, look: Look, where: np.ndarray) -> np.ndarray:
    """Crop rows at each field's orientation, tramlines, colour of the crop state."""
    tex = layout.textures
    ids = layout.parcel_ids[where]
    states = [CROPS[c] for c in look.crops]
    rgb = np.array([s[0] for s in states], np.float32)[ids]
    rows = np.array([s[1] for s in states], np.float32)[ids]
    tram = np.array([s[2] for s in states])[ids]
    ys, xs = np.nonzero(where)
    angle = layout.parcel_angle[ids]
    along = xs * np.cos(angle) + ys * np.sin(angle)
    wavy = along + 1.5 * tex["mid"][where]  # rows are never perfectly straight
    stripes = np.sin(2 * np.pi * wavy / layout.parcel_period[ids])
    lines = tram & (np.mod(along, layout.m(18.0)) < 1.2)
    f = 1 + rows * stripes + 0.08 * tex["mid"][where] + 0.05 * tex["fine"][where] - 0.2 * lines
    return (rgb * f[:, None]).T


def _draw_water(img: np.ndarray, layout: Layout, look: Look) -> None:
    """Dark, smooth water with a darker wet shore line."""
    if not layout.water.any():
        return
    tex = layout.textures
    water = np.asarray(look.water_rgb, np.float32)[:, None] * (
        1 + 0.06 * tex["low"][layout.water] + 0.02 * tex["fine"][layout.water]
    )
    shore = (box_blur(layout.water.astype(np.float32), 2) > 0.05) & ~layout.water
    img[:, shore] *= 0.8
    img[:, layout.water] = water


def _material(layout: Layout, name: str, where: np.ndarray) -> np.ndarray:
    """Textured colour (3, N) of a ground material at the pixels ``where``."""
    base, fine_amp, mid_amp = MATERIALS[name]
    tex = layout.textures
    f = 1 + fine_amp * tex["fine"][where] + mid_amp * tex["mid"][where]
    rgb = np.asarray(base, np.float32)[:, None] * f
    if name == "rubble":  # brown earth and grey debris mixed
        mix = np.clip(0.5 + tex["patch"][where], 0, 1)
        rgb = rgb * (1 - 0.3 * mix) + 0.3 * mix * SOIL_RGB[:, None]
    return rgb


def _draw_patches(img: np.ndarray, layout: Layout) -> None:
    """Parking lots, soil, rubble, gravel and pools, then their painted lines."""
    if not layout.patches:
        return
    names = sorted(MATERIALS)
    codes = [names.index(p.material) + 1 for p in layout.patches]
    material = burn(list(zip((p.geom for p in layout.patches), codes, strict=True)),
                    layout.shape)
    for code in set(codes):
        where = material == code
        img[:, where] = _material(layout, names[code - 1], where)
    lines = [p.lines for p in layout.patches if p.lines is not None]
    if lines:
        paint = burn(lines, layout.shape).astype(bool)
        img[:, paint] = 0.5 * img[:, paint] + 0.42


def _draw_roads(img: np.ndarray, layout: Layout) -> None:
    """Sidewalks, then asphalt or dirt with worn texture, then markings."""
    roads = layout.roads
    if not roads:
        return
    tex = layout.textures
    side = burn([r.polygon(r.sidewalk) for r in roads if r.sidewalk > 0], layout.shape)
    side = side.astype(bool)
    img[:, side] = CONCRETE[:, None] * (1 + 0.04 * tex["fine"][side])
    ids = burn([(r.polygon(), i + 1) for i, r in enumerate(roads)], layout.shape, np.int32)
    where = ids > 0
    k = ids[where] - 1
    tone = np.array([r.tone for r in roads], np.float32)[k]
    dirt = np.array([r.surface == "dirt" for r in roads])[k]
    grey = tone * (1 + 0.07 * tex["fine"][where] + 0.06 * tex["mid"][where])
    asphalt = np.stack([grey, grey, grey * 1.03])
    dirt_rgb = DIRT[:, None] * (1 + 0.10 * tex["fine"][where] + 0.08 * tex["mid"][where])
    img[:, where] = np.where(dirt[None], dirt_rgb, asphalt)
    marks = burn([r.markings for r in roads if not r.markings.is_empty], layout.shape)
    marks = marks.astype(bool)
    img[:, marks] = 0.35 * img[:, marks] + 0.55


# ---------------------------------------------------------------- shadows


def _shadows(layout: Layout, look: Look, cars: list[Box]) -> np.ndarray:
    """Soft shadow coverage (H, W) of buildings, cars, trees and forest edges."""
    dx, dy = look.shadow_step(layout.pixel_size)
    step = np.array([dx, dy])
    boxes = [(part, b.height) for b in layout.buildings + cars for part in b.parts]
    clouds = []
    if boxes:
        corners = np.stack([p.corners() for p, _ in boxes])
        tops = corners + np.array([h for _, h in boxes])[:, None, None] * step
        clouds.append(np.concatenate([corners, tops], axis=1))
    if layout.trees:
        crowns = np.stack([t.crown_points(0.9) for t in layout.trees])
        heights = np.array([t.height for t in layout.trees])[:, None, None]
        clouds.append(np.concatenate([crowns + 0.35 * heights * step, crowns + heights * step],
                                     axis=1))
    # shadow of a prism or a crown: hull of the object and its copy moved by the sun
    hulls = [h for c in clouds for h in shapely.convex_hull(shapely.multipoints(c))]
    mask = burn(hulls, layout.shape).astype(bool)
    if layout.forest.any():
        height = 18.0
        for f in (0.25, 0.5, 0.75, 1.0):
            mask |= shift_mask(layout.forest, round(f * dx * height), round(f * dy * height))
    return box_blur(mask.astype(np.float32), 1)


# ---------------------------------------------------------------- canopies


def _crown_colours(tone: np.ndarray, conifer: np.ndarray, look: Look) -> np.ndarray:
    """(N, 3) crown colours: varied greens, conifers darker, deciduous turning in autumn."""
    t = tone[:, None]
    green = DECIDUOUS[0] + (DECIDUOUS[1] - DECIDUOUS[0]) * t
    green = green + (np.array([0.40, 0.40, 0.24]) - green) * 0.25 * look.dryness
    turn = np.clip(look.autumn * 1.3 - np.mod(tone * 7.3, 1.0) * 0.8, 0, 0.85)[:, None]
    autumn = AUTUMN[(tone * 11).astype(int) % len(AUTUMN)]
    deciduous = green + (autumn - green) * turn
    conifer_rgb = CONIFER * (0.85 + 0.3 * t)
    return np.where(conifer[:, None], conifer_rgb, deciduous).astype(np.float32)


def _sphere_light(
    ox: np.ndarray, oy: np.ndarray, look: Look, flat: float | np.ndarray = 1.0
) -> np.ndarray:
    """Relative brightness of a crown at normalised offsets from its centre; ``flat`` < 1
    flattens the dome, > 1 sharpens it into a cone-like conifer."""
    z = np.sqrt(np.clip(1.0 - ox * ox - oy * oy, 0.02, 1.0)) * flat
    norm = np.sqrt(ox * ox + oy * oy + z * z)
    s = look.sun
    lam = (ox * s[0] + oy * s[1] + z * s[2]) / norm
    return np.clip(AMBIENT + (1 - AMBIENT) * np.clip(lam, 0, None) / s[2], 0.25, 1.7)


def _draw_canopy(img: np.ndarray, layout: Layout, look: Look) -> None:
    """Closed forest: touching crowns lit from the sun's side, dark gaps between them."""
    if not layout.forest.any():
        return
    where = layout.forest
    tex = layout.textures
    ident = tex["crown_id"][where]
    radius = 0.5 + 0.3 * np.mod(ident * 13.7, 1.0)
    ox = tex["crown_dx"][where] / radius
    oy = tex["crown_dy"][where] / radius
    light = _sphere_light(ox, oy, look, flat=0.7)
    gap = ox * ox + oy * oy > 1.0
    light = np.where(gap, 0.4, light)
    light *= 1 + 0.22 * tex["fine"][where] + 0.08 * tex["mid"][where]
    rgb = _crown_colours(ident, ident < layout.conifer_share, look)
    img[:, where] = (rgb * light[:, None]).T


def _draw_trees(img: np.ndarray, layout: Layout, look: Look) -> None:
    """Single trees: round crowns, conifers more pointed."""
    trees: list[Tree] = layout.trees
    if not trees:
        return
    lean = np.array(look.lean) / layout.pixel_size
    shapes = [(affinity.translate(t.crown(), *(0.8 * t.height * lean)), i + 1)
              for i, t in enumerate(trees)]
    ids = burn(shapes, layout.shape, np.int32)
    ys, xs = np.nonzero(ids)
    k = ids[ys, xs] - 1
    heights = np.array([t.height for t in trees], np.float32)[k]
    cx, cy, r = (np.array([getattr(t, a) for t in trees], np.float32)[k] for a in "xyr")
    cx, cy = cx + 0.8 * heights * lean[0], cy + 0.8 * heights * lean[1]
    conifer = np.array([t.conifer for t in trees])
    ox, oy = (xs + 0.5 - cx) / r, (ys + 0.5 - cy) / r
    light = _sphere_light(ox, oy, look, flat=np.where(conifer[k], 1.4, 0.7))
    light = light * (1 + 0.22 * layout.textures["fine"][ys, xs])
    rgb = _crown_colours(np.array([t.tone for t in trees]), conifer, look)[k]
    img[:, ys, xs] = (rgb * light[:, None]).T


# ---------------------------------------------------------------- buildings and cars

ROOF_CODES = {"flat": 0, "gable": 1, "hip": 2, "car": 3}


def _draw_boxes(img: np.ndarray, layout: Layout, boxes: list[Box], look: Look) -> None:
    """Walls seen obliquely, then roofs lit by the sun (gable and hip planes, flat roofs
    with parapets) and cars, all displaced by the view's lean."""
    if not boxes:
        return
    lean = np.array(look.lean) / layout.pixel_size
    _draw_walls(img, layout, boxes, lean)
    parts = [(_lifted(p, lean * b.height), b.rgb, b.roof, b.slope, b.ribbed)
             for b in boxes for p in b.parts]
    parts += [(_lifted(p, lean * (b.height + 1.5)), tuple(0.8 * c + 0.12 for c in b.rgb),
               "flat", 0.0, False) for b in boxes for p in b.extras]
    ids = burn([(p[0].polygon(), i + 1) for i, p in enumerate(parts)], layout.shape, np.int32)
    ys, xs = np.nonzero(ids)
    k = ids[ys, xs] - 1
    u, v, ux, uy, half_l, half_w = _part_frames([p[0] for p in parts], k, xs, ys)
    code = np.array([ROOF_CODES[p[2]] for p in parts])[k]
    slope = np.array([p[3] for p in parts], np.float32)[k]
    light = _roof_light(u, v, ux, uy, half_l, half_w, code, slope, look)
    tex = layout.textures
    light *= 1 + 0.05 * tex["fine"][ys, xs] + 0.04 * tex["mid"][ys, xs]
    ribbed = np.array([p[4] for p in parts])[k]
    light *= np.where(ribbed, 1 + 0.06 * np.sin(np.pi * u), 1.0)
    rim = (half_l - np.abs(u) < 1.0) | (half_w - np.abs(v) < 1.0)
    light *= np.where(rim, np.where(code == 0, 1.12, 0.8), 1.0)
    rgb = np.array([p[1] for p in parts], np.float32)[k]
    rel = u / half_l
    window = (code == 3) & (((rel > 0.12) & (rel < 0.42)) | ((rel < -0.55) & (rel > -0.8)))
    rgb[window] = 0.1
    img[:, ys, xs] = (rgb * light[:, None]).T


def _part_frames(
    rects: list[Rect], k: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per pixel of part ``k``: local (u, v), the part's axis (ux, uy) and half sizes."""
    cx, cy, half_l, half_w, ang = (
        np.array(v, np.float32)[k]
        for v in zip(*[(r.cx, r.cy, r.length / 2, r.width / 2, r.angle) for r in rects],
                     strict=True)
    )
    ux, uy = np.cos(ang), np.sin(ang)
    px, py = xs + 0.5 - cx, ys + 0.5 - cy
    return px * ux + py * uy, -px * uy + py * ux, ux, uy, half_l, half_w


def _lifted(rect: Rect, offset: np.ndarray) -> Rect:
    """A roof seen off-nadir: the part moved by ``offset`` pixels."""
    return Rect(rect.cx + offset[0], rect.cy + offset[1], rect.length, rect.width, rect.angle)


def _draw_walls(img: np.ndarray, layout: Layout, boxes: list[Box], lean: np.ndarray) -> None:
    """Facades between footprint and displaced roof, darker than the roof."""
    if not lean.any():
        return
    walls = [(b.wall, np.concatenate([p.corners(), p.corners() + lean * b.height]))
             for b in boxes for p in b.parts]
    hulls = shapely.convex_hull(shapely.multipoints(np.stack([c for _, c in walls])))
    ids = burn([(h, i + 1) for i, h in enumerate(hulls)], layout.shape, np.int32)
    ys, xs = np.nonzero(ids)
    rgb = np.array([w for w, _ in walls], np.float32)[ids[ys, xs] - 1]
    img[:, ys, xs] = (rgb * (0.7 + 0.05 * layout.textures["fine"][ys, xs])[:, None]).T


def _roof_light(
    u: np.ndarray, v: np.ndarray, ux: np.ndarray, uy: np.ndarray,
    half_l: np.ndarray, half_w: np.ndarray, code: np.ndarray, slope: np.ndarray, look: Look,
) -> np.ndarray:
    """Lambert shading of each roof plane relative to flat ground."""
    side = np.where(v >= 0, 1.0, -1.0)
    sin_s, cos_s = np.sin(slope), np.cos(slope)
    nx, ny = side * sin_s * -uy, side * sin_s * ux
    end = (code == 2) & (np.abs(v) < np.abs(u) - (half_l - half_w))
    end_side = np.where(u >= 0, 1.0, -1.0)
    nx = np.where(end, end_side * sin_s * ux, nx)
    ny = np.where(end, end_side * sin_s * uy, ny)
    pitched = (code == 1) | (code == 2)
    nx, ny = np.where(pitched, nx, 0.0), np.where(pitched, ny, 0.0)
    nz = np.where(pitched, cos_s, 1.0)
    s = look.sun
    lam = nx * s[0] + ny * s[1] + nz * s[2]
    return np.clip(AMBIENT + (1 - AMBIENT) * np.clip(lam, 0, None) / s[2], 0.3, 1.6)
