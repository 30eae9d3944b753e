"""Training and evaluation data: the tile-folder layout of the public WSCD data sets.

``A/`` (t1), ``B/`` (t2), optional ``label/`` (0/255 masks, evaluation only) and
``list/{split}.txt`` plus ``list/{split}_label.txt`` (``name.png,...,0|1``, label last).
Tiles are read through rasterio, so PNG, JPEG and GeoTIFF tiles all work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from kdmsi_core.errors import DataError
from kdmsi_train.image_files import incomplete

PRELOAD_LIMIT_BYTES = 1_500_000_000


def read_tile(path: Path) -> np.ndarray:
    """A tile as an array (bands, H, W); a clear error when it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"The tile {path} listed in the data set does not exist; fix the list "
                        "file or add the tile.")
    if incomplete(path):
        raise DataError(f"The tile {path} is truncated (its image data ends early); replace "
                        "it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.read()
    except RasterioIOError:
        raise DataError(f"The tile {path} is not a readable image; replace it.") from None


@contextmanager
def written_whole(root: Path, prefix: str = ".kdmsi-tiles-") -> Iterator[Path]:
    """A new folder beside ``root`` to write a folder's content into: it replaces ``root``
    when the block ends and is removed when the block fails, so that ``root`` appears
    complete or not at all (an interrupted run never leaves half a data set behind)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))
    try:
        yield tmp
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


SYNTH_RECORD = "synth.json"
"""The record ``kdmsi-geo synth`` writes beside its tiles: its parameters, the pixels' ground
size among them (``pixel_size``, metres), and the label balance per split."""
PIXEL_SIZE_FILES = (SYNTH_RECORD, f"../{SYNTH_RECORD}")
"""Where a tile folder may say its pixels' ground size: in or beside it."""


def folder_pixel_size(root: str | Path) -> float | None:
    """The ground size in metres of a tile folder's pixels, where a record of it lies in or
    beside the folder; None when nothing says (public data sets in PNG tiles)."""
    for name in PIXEL_SIZE_FILES:
        path = Path(root) / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("pixel_size")
            except (OSError, ValueError, AttributeError):
                return None
            return float(value) if isinstance(value, int | float) and value > 0 else None
    return None


def raster_pixel_size(path: str | Path) -> float | None:
    """The ground size in metres of a georeferenced raster's pixels (None if it cannot be
    told)."""
    from kdmsi_core.resolution import ground_pixel_size

    with rasterio.open(path) as ds:
        return ground_pixel_size(ds.crs, ds.transform, ds.width, ds.height)


def with_pixel_size(summary: dict, pixel_size: float | None) -> dict:
    """A model card's data summary with the pixel size where it is known: detection then
    meets finer imagery at it (:mod:`kdmsi_core.resolution`); a model trained on data of
    unknown pixel size runs on any data as it is."""
    return summary if pixel_size is None else {**summary, "pixel_size": round(pixel_size, 6)}


def _read_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _parse_labels(path: Path) -> dict[str, int]:
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or fields[-1] not in ("0", "1"):
            raise DataError(f"Line {number} of {path} does not parse as 'name.png,...,0|1' "
                            f"({line.strip()!r}); fix the line.")
        labels[fields[0]] = int(fields[-1])
    return labels


@dataclass
class TileFolder:
    """One split of a tile-folder data set: names, image-level labels, optional masks."""

    root: Path
    split: str
    names: list[str]
    labels: np.ndarray | None
    has_masks: bool

    @classmethod
    def open(cls, root: str | Path, split: str = "train", need_labels: bool = True,
             need_masks: bool = False) -> TileFolder:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"The data folder {root} does not exist.")
        for sub in ("A", "B"):
            if not (root / sub).is_dir():
                raise DataError(f"The data folder {root} has no {sub}/ folder; it needs A/ (t1), "
                                "B/ (t2) and list/ as in LEVIR-CD or WHU-CD.")
        list_file = root / "list" / f"{split}.txt"
        label_file = root / "list" / f"{split}_label.txt"
        if list_file.is_file():
            names = _read_names(list_file)
        elif label_file.is_file():
            names = list(_parse_labels(label_file))
        else:
            raise DataError(f"The data folder {root} has no list/{split}.txt; list the tile "
                            f"names of the {split} split there.")
        if not names:
            raise DataError(f"{list_file} lists no tiles.")
        labels = None
        if label_file.is_file():
            parsed = _parse_labels(label_file)
            missing = [n for n in names if n not in parsed]
            if missing:
                raise DataError(f"{label_file} has no label for {missing[0]} (and "
                                f"{len(missing) - 1} more); every listed tile needs one.")
            labels = np.array([parsed[n] for n in names], dtype=np.float32)
        elif need_labels:
            raise DataError(f"The data folder {root} has no list/{split}_label.txt with "
                            "image-level labels ('name.png,0|1' per line); training needs it.")
        has_masks = (root / "label").is_dir()
        if need_masks and not has_masks:
            raise DataError(f"The data folder {root} has no label/ folder of change masks; "
                            "evaluation needs pixel masks.")
        return cls(root, split, names, labels, has_masks)

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """t1 and t2 of tile ``i``; tiles of different shapes are refused."""
        name = self.names[i]
        a, b = read_tile(self.root / "A" / name), read_tile(self.root / "B" / name)
        if a.shape != b.shape:
            raise DataError(f"The tiles A/{name} {a.shape[1]}x{a.shape[2]}x{a.shape[0]} and "
                            f"B/{name} {b.shape[1]}x{b.shape[2]}x{b.shape[0]} differ in size or "
                            "bands; both dates must be co-registered tiles of one size.")
        return a, b

    def mask(self, i: int) -> np.ndarray:
        """The change mask of tile ``i`` as bool (H, W): any non-zero value is change."""
        return read_tile(self.root / "label" / self.names[i])[0] > 0



def _check_bands(bands: tuple[int, ...] | None, count: int, root: Path
                 ) -> tuple[int, ...] | None:
    """1-based band numbers to read, checked against the tiles' band count."""
    if not bands:
        return None
    if min(bands) < 1 or max(bands) > count:
        raise DataError(f"The tiles of {root} have {count} bands; choose bands between 1 and "
                        f"{count}, not {','.join(map(str, bands))}.")
    return tuple(bands)


class PairStore:
    """The pairs of one split: held in memory when they fit, otherwise read per batch."""

    def __init__(self, folder: TileFolder, bands: tuple[int, ...] | None = None) -> None:
        self.folder = folder
        first, _ = folder.pair(0)
        self.bands = _check_bands(bands, first.shape[0], folder.root)
        self.shape = (len(self.bands), *first.shape[1:]) if self.bands else first.shape
        self.dtype = first.dtype
        self._a: np.ndarray | None = None
        self._b: np.ndarray | None = None
        if first.nbytes * 2 * len(folder) * self.shape[0] // first.shape[0] \
                <= PRELOAD_LIMIT_BYTES:
            self._a, self._b = self._read(range(len(folder)))

    @property
    def labels(self) -> np.ndarray | None:
        return self.folder.labels

    @property
    def split(self) -> str:
        return self.folder.split

    def __len__(self) -> int:
        return len(self.folder)

    def _read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = list(indices)
        a = np.empty((len(indices), *self.shape), dtype=self.dtype)
        b = np.empty_like(a)
        for j, i in enumerate(indices):
            ta, tb = self.folder.pair(i)
            if self.bands and ta.shape[0] >= max(self.bands):
                ta, tb = ta[[k - 1 for k in self.bands]], tb[[k - 1 for k in self.bands]]
            if ta.shape != self.shape:
                names = self.folder.names
                raise DataError(f"The tile {names[i]} is {ta.shape[2]}x{ta.shape[1]}x{ta.shape[0]}"
                                f" but {names[0]} is {self.shape[2]}x{self.shape[1]}x"
                                f"{self.shape[0]}; all tiles of a data set must have one size.")
            a[j], b[j] = ta, tb
        return a, b

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """t1 and t2 of the given tiles, stacked (B, C, H, W)."""
        if self._a is not None and self._b is not None:
            return self._a[indices], self._b[indices]
        return self._read(indices)


def sample_values(store, tiles: int = 256, seed: int = 0) -> np.ndarray:
    """(C, n) values of both dates of up to ``tiles`` tiles of a store (anything with
    ``batch`` and ``len``), decimated to about a million per band: what the scaling rule of
    :mod:`kdmsi_core.normalize` is estimated from."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(store), size=min(tiles, len(store)), replace=False))
    a, b = store.batch(idx)
    step = max(1, int(np.sqrt(len(idx) * a.shape[2] * a.shape[3] / 500_000)))
    both = np.concatenate([a, b])[:, :, ::step, ::step]
    return both.transpose(1, 0, 2, 3).reshape(both.shape[1], -1).astype(np.float64)
