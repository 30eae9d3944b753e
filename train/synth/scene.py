"""One synthetic scene pair: two dates of the same place and the mask of what changed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdmsi_core.errors import ParameterError
from kdmsi_train.synth.buildings import place_cars
from kdmsi_train.synth.changes import RATE, make_changes
from kdmsi_train.synth.geometry import burn
from kdmsi_train.synth.landscape import make_layout
from kdmsi_train.synth.render import make_looks, render, sensor

MIN_SIZE = 32
MIN_PIXEL, MAX_PIXEL = 0.1, 2.0  # metres: very-high-resolution imagery, as in the WSCD sets
MAX_MISREGISTRATION = 1.5  # pixels


@dataclass(frozen=True)
class ScenePair:
    """Images of two dates, (3, H, W) uint8 RGB, and the change mask, (H, W) uint8 0/1.

    ``kinds`` (H, W) uint8 says which kind of event changed each pixel (0 none, else the
    index + 1 in :data:`~kdmsi_train.synth.changes.KINDS`; the later event where two
    overlap), and ``backward`` whether the dates run backwards, so that a "new building"
    shows as a building gone and a "demolition" as a building rising on a cleared site.
    """

    t1: np.ndarray
    t2: np.ndarray
    mask: np.ndarray
    style: str = ""
    kinds: np.ndarray | None = None
    backward: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return self.mask.shape


def make_scene_pair(
    seed: int, size: int | tuple[int, int] = 512, pixel_size: float = 0.5,
    change_rate: float = 1.0,
) -> ScenePair:
    """Generate the scene pair of ``seed``; the same arguments always give the same arrays.

    ``size`` is a side length or (height, width) in pixels; ``pixel_size`` is in metres
    and scales every object, so a 2 m scene shows the same kind of place, coarser.
    ``change_rate`` multiplies the mean number of extra change events per area.
    """
    shape = check_scene_args(size, pixel_size)
    rng = np.random.default_rng(seed)
    first = make_layout(rng, shape, pixel_size)
    second, changed = make_changes(rng, first, RATE * change_rate)
    backward = rng.random() < 0.25  # some changes run backwards: buildings vanish, sites fill
    if backward:
        first, second = second, first
    kinds = burn(changed, shape)
    look1, look2 = make_looks(rng, first)
    img1 = render(first, look1, place_cars(rng, first))
    img2 = render(second, look2, place_cars(rng, second))
    return ScenePair(
        t1=sensor(rng, img1, look1, _offset(rng, 0.35)),  # resampled too, as sharp as t2
        t2=sensor(rng, img2, look2, _offset(rng, MAX_MISREGISTRATION)),
        mask=(kinds > 0).astype(np.uint8),
        style=first.style,
        kinds=kinds,
        backward=backward,
    )


def _offset(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    """A random sub-pixel shift of at most ``radius`` pixels."""
    angle, r = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.random())
    return float(r * np.cos(angle)), float(r * np.sin(angle))


def check_scene_args(size: int | tuple[int, int], pixel_size: float) -> tuple[int, int]:
    """Validate a scene size (one side or (height, width)) and pixel size; returns the shape."""
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or min(h, w) < MIN_SIZE:
        raise ParameterError(f"The scene size must be whole pixels of at least {MIN_SIZE}, "
                             f"not {size}.")
    if not MIN_PIXEL <= pixel_size <= MAX_PIXEL:
        raise ParameterError(f"The pixel size must be between {MIN_PIXEL} and {MAX_PIXEL} m, "
                             f"not {pixel_size}.")
    return int(h), int(w)
