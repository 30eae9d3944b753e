"""Outputs that appear complete or not at all, and the rasters written strip by strip.

Everything is written inside a hidden staging folder next to each final output (same file
system, so the final ``os.replace`` is atomic; GDAL's and SQLite's side files land there
too). The folders are removed whatever happens: success, error, Ctrl-C, SIGTERM or SIGHUP
(see :mod:`kdmsi_core.signals`). The owner of a staging folder holds a lock on it, so a
folder that SIGKILL left behind is recognised and removed by the next run into that folder.
A lock file beside each output keeps two runs from writing the same output at once.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyogrio.errors
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.windows import Window

from kdmsi_core.errors import KdmsiError, OutputError
from kdmsi_core.hysteresis import GROW_PX, change_mask
from kdmsi_core.raster import Grid, dataset_files
from kdmsi_core.signals import outputs_committed, uninterrupted

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not guarded against each other
    fcntl = None

PROBABILITY_NODATA = -1.0
MASK_NODATA = 255
COG_BLOCKSIZE = 512
GEOTIFF_SUFFIXES = (".tif", ".tiff")
STAGING_PREFIX, STAGING_SUFFIX = ".kdmsi-", ".tmp"
FULL_DISK_BYTES = 1 << 20
_SCRATCH = {"driver": "GTiff", "compress": "ZSTD", "zstd_level": 1, "tiled": False,
            "blockysize": 16, "bigtiff": "IF_SAFER"}


def _identity(path: str | os.PathLike) -> tuple[str, tuple[int, int] | None]:
    """A file's resolved path and, when it exists, its (device, inode): two names of one file
    (a symlink, a hard link, a VRT's source) share one of them."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return str(Path(path).resolve()), inode


def check_outputs(changes: Path, probability: Path, mask: Path | None,
                  inputs: Sequence[str | os.PathLike], overwrite: bool) -> None:
    """Refuse, before any work, every output that could not be written or would clobber,
    including any file GDAL reads for an input (a VRT's sources, side files) under any of
    its names."""
    if changes.suffix.lower() != ".gpkg":
        raise OutputError(f"The polygon output {changes} must be a GeoPackage (.gpkg).")
    for path, what in ((probability, "probability"), (mask, "mask")):
        if path is not None and path.suffix.lower() not in GEOTIFF_SUFFIXES:
            raise OutputError(f"The {what} output {path} must be a GeoTIFF (.tif or .tiff).")
    targets = [p for p in (changes, probability, mask) if p is not None]
    resolved = [p.resolve() for p in targets]
    if len(set(resolved)) != len(resolved):
        raise OutputError("Two outputs were given the same path; give each its own file.")
    names, inodes = set(), set()
    for source in inputs:
        for f in dataset_files(source):
            name, inode = _identity(f)
            names.add(name)
            inodes.add(inode)
    inodes.discard(None)
    for path in targets:
        name, inode = _identity(path)
        if name in names or inode in inodes:
            raise OutputError(f"The output {path} is one of the input rasters or a file "
                              "they are read from (under any name); choose another output "
                              "path.")
        folder = path.parent
        if not folder.is_dir():
            raise OutputError(f"The output folder {folder} does not exist; create it first.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"The output folder {folder} is not writable.")
        if path.is_dir():
            raise OutputError(f"The output {path} is a folder; give a file name.")
        if path.exists() and not overwrite:
            raise OutputError(f"The output {path} already exists; use --overwrite to "
                              "replace it.")


def _lock_file(target: Path) -> Path:
    return target.with_name(f".{target.name}.kdmsi-lock")


def _acquire(target: Path) -> int:
    """An exclusive lock on ``target``'s lock file, as an open descriptor. The file is
    unlinked on release, so a lock taken on a file that was unlinked meanwhile is retried."""
    lock = _lock_file(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"The output {target} is in use by another kdmsi-geo run; wait "
                              "for it to finish or choose another output path.") from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        st = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)


def _owned(folder: Path) -> int | None:
    """A descriptor holding ``folder``'s lock, or None when its owner still runs."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale(folder: Path) -> None:
    """Remove the staging folders in ``folder`` whose owning process is gone (killed by
    SIGKILL or a power cut); those of running processes are locked and stay."""
    if fcntl is None:
        return
    for entry in folder.glob(f"{STAGING_PREFIX}*{STAGING_SUFFIX}"):
        if entry.is_symlink() or not entry.is_dir():
            continue
        try:
            fd = _owned(entry)
        except OSError:
            continue
        if fd is not None:
            shutil.rmtree(entry, ignore_errors=True)
            os.close(fd)


def _make_staging(folder: Path) -> tuple[Path, int | None]:
    """A new staging folder in ``folder``, locked before it takes the name other runs look
    for, so that no run ever takes a live one for stale."""
    fresh = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".new", dir=folder))
    if fcntl is None:
        return fresh, None
    fd = _owned(fresh)
    final = fresh.with_suffix(STAGING_SUFFIX)
    os.rename(fresh, final)
    return final, fd


class Staging:
    """Hidden staging folders for a set of final outputs; ``commit`` moves the staged files
    into place, and leaving the context removes the folders (and so every temporary).

    Entering locks every output against other runs and removes stale staging folders.
    ``overwrite`` False refuses at the commit an output that another program created
    during the run."""

    def __init__(self, targets: Sequence[Path], overwrite: bool = True) -> None:
        self.targets = list(targets)
        self.overwrite = overwrite
        self._dirs: dict[Path, Path] = {}
        self._fds: list[int] = []
        self._locks: list[tuple[Path, int]] = []

    def __enter__(self) -> Staging:
        try:
            if fcntl is not None:
                for target in self.targets:
                    self._locks.append((_lock_file(target), _acquire(target)))
            for target in self.targets:
                folder = target.parent.resolve()
                if folder not in self._dirs:
                    remove_stale(folder)
                    self._dirs[folder], fd = _make_staging(folder)
                    if fd is not None:
                        self._fds.append(fd)
        except OSError as exc:
            self._remove()
            raise OutputError(f"Cannot write in the output folder ({exc.strerror}): "
                              f"{exc.filename}.") from None
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def staged(self, target: Path) -> Path:
        """Where ``target`` is written until the commit (same name, hidden folder)."""
        return self._dirs[target.parent.resolve()] / target.name

    def scratch(self, name: str) -> Path:
        """A working file that never becomes an output (next to the first output)."""
        return self._dirs[self.targets[0].parent.resolve()] / f"scratch-{name}"

    def commit(self) -> None:
        """Move every staged output into place, signals held back meanwhile. Each old output
        is kept (as a hard link, else moved) in the staging folder until all moves succeeded;
        if one fails, every old output is put back as it was and the new ones are gone."""
        with uninterrupted():
            for target in self.targets:
                if target.is_dir() and not target.is_symlink():
                    raise OutputError(f"A folder appeared at the output path {target} during "
                                      "the run; remove it or choose another path.")
                if not self.overwrite and os.path.lexists(target):
                    raise OutputError(f"The output {target} appeared during the run; use "
                                      "--overwrite to replace it or choose another path.")
            done: list[tuple[Path, Path | None]] = []
            try:
                for target in self.targets:
                    old = self._keep_old(target)
                    try:
                        os.replace(self.staged(target), target)
                    except BaseException:
                        if old is not None:
                            os.replace(old, target)
                        raise
                    done.append((target, old))
            except BaseException as exc:
                for target, old in reversed(done):
                    if old is not None:
                        os.replace(old, target)
                    else:
                        target.unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    raise OutputError(f"The outputs could not be moved into place "
                                      f"({exc.strerror or exc}: {exc.filename}); the previous "
                                      "files are unchanged.") from None
                raise
            outputs_committed()

    def _keep_old(self, target: Path) -> Path | None:
        """Keep the existing ``target`` in the staging folder; None when there is none."""
        if not os.path.lexists(target):
            return None
        old = self._dirs[target.parent.resolve()] / f"old-{target.name}"
        try:
            os.link(target, old, follow_symlinks=False)
        except OSError:  # no hard links on this file system: move it aside instead
            os.replace(target, old)
        return old

    def _remove(self) -> None:
        for folder in self._dirs.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._dirs.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        for lock, fd in self._locks:
            lock.unlink(missing_ok=True)
            os.close(fd)
        self._locks.clear()


def _full_folder(error: BaseException, folders: Sequence[Path]) -> Path | None:
    """The output folder whose disk the error says (or shows) is full, if any."""
    text = str(error).lower()
    said = ((isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT))
            or any(w in text for w in ("no space", "disk space", "disk full")))
    for folder in folders:
        try:
            if said or shutil.disk_usage(folder).free < FULL_DISK_BYTES:
                return folder
        except OSError:
            continue
    return None


@contextmanager
def write_errors(targets: Sequence[Path]) -> Iterator[None]:
    """Turn a failed write of the outputs (a full disk, an I/O error) into an
    :class:`OutputError`; leaving :class:`Staging` then removes every partial file."""
    folders = list(dict.fromkeys(t.parent for t in targets))
    try:
        yield
    except KdmsiError:
        raise
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
            rasterio.errors.RasterioError) as exc:
        folder = _full_folder(exc, folders)
        if folder is not None:
            raise OutputError(f"The disk holding {folder} is full; free some space or write "
                              "the outputs elsewhere, then run again.") from None
        folder = folders[0]
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
        detail = detail.replace(". ", "; ")
        raise OutputError(f"Writing the outputs in {folder} failed ({detail}); check the "
                          "folder and run again.") from None


class StripWriter:
    """Writes finished strips of the region, full grid width, into scratch GeoTIFFs: the
    probability (float32, nodata -1), the change raster used for polygons (uint8 1 = change,
    0 elsewhere) and optionally the user's mask (1 change, 0 none, 255 nodata).

    With a lower threshold the change rule (:func:`~kdmsi_core.hysteresis.change_mask`)
    looks :data:`GROW_PX` rows across, so rows are held back until that many rows below them
    have arrived, and decided with as many rows above them: the result equals the rule
    applied to the whole raster, with a few strips of memory. Plain thresholding holds
    nothing back. :meth:`finish` writes the last rows."""

    def __init__(self, grid: Grid, region: Window, threshold: float, low: float,
                 probability: Path, changes: Path, mask: Path | None,
                 tags: dict[str, str]) -> None:
        self.grid, self.region, self.threshold, self.low = grid, region, threshold, low
        self._reach = GROW_PX if low < threshold else 0  # rows the rule looks across
        self.changed_pixels = 0
        self._row = int(region.row_off)  # grid row of the first held row
        self._held = np.zeros((0, grid.width), np.float32)
        self._held_ok = np.zeros((0, grid.width), bool)
        self._context = 0  # held rows above ``_row``, already written, kept as context
        base = {**_SCRATCH, "width": grid.width, "height": grid.height, "count": 1,
                "crs": grid.crs, "transform": grid.transform}
        self._files: list[rasterio.io.DatasetWriter] = []
        try:
            self._prob = self._open(probability, base, "float32", PROBABILITY_NODATA)
            self._prob.update_tags(**tags)
            self._prob.set_band_description(1, "change probability")
            self._changes = self._open(changes, base, "uint8", None)
            self._mask = self._open(mask, base, "uint8", MASK_NODATA) if mask else None
            if self._mask is not None:
                self._mask.update_tags(**tags)
                self._mask.set_band_description(1, "change (1) / no change (0)")
            self._fill_outside()
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, base: dict, dtype: str,
              nodata: float | None) -> rasterio.io.DatasetWriter:
        ds = rasterio.open(path, "w", **base, dtype=dtype, nodata=nodata)
        self._files.append(ds)
        return ds

    def _fill_outside(self) -> None:
        """Rows above and below the analysed region are nodata throughout."""
        top = int(self.region.row_off)
        bottom = top + int(self.region.height)
        for start, stop in ((0, top), (bottom, self.grid.height)):
            for row in range(start, stop, 1024):
                n = min(1024, stop - row)
                prob = np.full((n, self.grid.width), PROBABILITY_NODATA, np.float32)
                none = np.zeros((n, self.grid.width), bool)
                self._emit(row, prob, none, none)

    def write(self, row: int, probability: np.ndarray, valid: np.ndarray) -> None:
        """One strip of the region's columns starting at grid row ``row`` (strips come in
        order, top to bottom)."""
        n, width = probability.shape
        if row != self._row + len(self._held) - self._context:
            raise ValueError(f"strip at row {row} is out of order")
        c0 = int(self.region.col_off)
        prob = np.full((n, self.grid.width), PROBABILITY_NODATA, np.float32)
        ok = np.zeros((n, self.grid.width), bool)
        prob[:, c0:c0 + width] = np.where(valid, probability, PROBABILITY_NODATA)
        ok[:, c0:c0 + width] = valid
        self._held = np.concatenate([self._held, prob])
        self._held_ok = np.concatenate([self._held_ok, ok])
        self._decide(len(self._held) - self._reach)

    def finish(self) -> None:
        """Write the rows still held: nothing comes below them."""
        self._decide(len(self._held))

    def _decide(self, stop: int) -> None:
        """Write the held rows up to index ``stop`` and keep the context the next need."""
        if stop <= self._context:
            return
        end = stop + self._reach
        change = change_mask(self._held[:end], self.threshold, self.low, self._held_ok[:end])
        rows = slice(self._context, stop)
        self._emit(self._row, self._held[rows], self._held_ok[rows], change[rows])
        self._row += stop - self._context
        keep = max(0, stop - self._reach)
        self._held, self._held_ok = self._held[keep:], self._held_ok[keep:]
        self._context = stop - keep

    def _emit(self, row: int, prob: np.ndarray, ok: np.ndarray, change: np.ndarray) -> None:
        self.changed_pixels += int(change.sum())
        window = Window(0, row, self.grid.width, prob.shape[0])
        self._prob.write(prob, 1, window=window)
        self._changes.write(change.view(np.uint8), 1, window=window)
        if self._mask is not None:
            self._mask.write(np.where(ok, change, MASK_NODATA).astype(np.uint8), 1,
                             window=window)

    def close(self) -> None:
        """Close every file; a write that failed only while flushing raises here."""
        files, self._files = self._files, []
        for ds in files:
            with gdal_failures(Path(ds.name)):
                ds.close()


class _GdalFailures(logging.Handler):
    """Collects the errors GDAL signals while rasterio goes on (it only logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("GDAL signalled an error"):
            self.messages.append(text.split("msg=", 1)[-1].strip("'\""))


@contextmanager
def gdal_failures(target: Path) -> Iterator[None]:
    """Raise :class:`OSError` for ``target`` when GDAL signalled an error during the block
    without failing it: a GeoTIFF whose writes failed (a full disk) is closed without an
    exception, truncated, and must not become an output."""
    logger = logging.getLogger("rasterio._env")
    handler, level = _GdalFailures(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if handler.messages:
        full = any("space" in m.lower() for m in handler.messages)
        raise OSError(errno.ENOSPC if full else errno.EIO, handler.messages[0], str(target))


def write_cog(source: Path, target: Path, resampling: str) -> None:
    """Copy a scratch GeoTIFF into a Cloud Optimized GeoTIFF with GDAL's COG driver (tiled,
    DEFLATE with predictor, internal overviews down to one block, nodata kept). DEFLATE
    level 1 takes half the time of the default level 6 for files about 6 % larger."""
    with gdal_failures(target):
        rasterio.shutil.copy(source, target, driver="COG", COMPRESS="DEFLATE", LEVEL=1,
                             PREDICTOR="YES",
                             BLOCKSIZE=COG_BLOCKSIZE, OVERVIEW_RESAMPLING=resampling,
                             NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER")
