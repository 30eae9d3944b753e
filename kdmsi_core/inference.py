"""Tiles to probabilities: read and normalise batches, run MSI on an engine.

Shared by the single-process pipeline and the Dask workers (:mod:`distributed`), so that
both compute each tile the same way; the engine (:mod:`engine`) only runs the network.
Batches are numpy arrays until the engine takes them, so nothing here needs torch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from kdmsi_core.engine import Engine
from kdmsi_core.msi import msi
from kdmsi_core.normalize import Normalization
from kdmsi_core.raster import RasterPair
from kdmsi_core.refine import Refinement, refine
from kdmsi_core.tiling import Tile

PREFETCH = 2
SKIP_REPORT = 64

GPU_TILE_PIXELS = 256 * 256
"""A GPU pass holds 16 tiles of this many pixels (fewer when finer imagery makes tiles
larger: :mod:`~kdmsi_core.resolution`)."""
CPU_PIXELS_PER_PASS = 256 * 256
"""On the CPU the best batch holds about this many pixels (bench/msi.py: one 256-px tile,
four of 128 px, sixteen of 64 px); more only overflows the caches, fewer wastes time on
per-operation overhead."""


def default_batch_size(device: str, tile: Tile) -> int:
    """Tiles per forward pass: 16 tiles of 256 px worth on a GPU, :data:`CPU_PIXELS_PER_PASS`
    worth on a CPU (at least one tile)."""
    per_pass = 16 * GPU_TILE_PIXELS if str(device).startswith("cuda") else CPU_PIXELS_PER_PASS
    return max(1, per_pass // (tile.height * tile.width))


@dataclass
class Batch:
    """Normalised float32 tiles (N, C, H, W) of both dates and their validity (N, H, W),
    and the empty tiles skipped before them."""

    tiles: list[Tile]
    t1: np.ndarray | None
    t2: np.ndarray | None
    valid: np.ndarray | None
    skipped: int


def _batch(picked: list[tuple[Tile, np.ndarray, np.ndarray, np.ndarray]], skipped: int,
           norms: tuple[Normalization, Normalization]) -> Batch:
    if not picked:
        return Batch([], None, None, None, skipped)
    valid = np.stack([p[3] for p in picked])
    keep = valid[:, None]
    x1 = norms[0].apply(np.stack([p[1] for p in picked])) * keep
    x2 = norms[1].apply(np.stack([p[2] for p in picked])) * keep
    return Batch([p[0] for p in picked], x1, x2, valid, skipped)


def batches(pair: RasterPair, tiles: list[Tile], norms: tuple[Normalization, Normalization],
            batch_size: int) -> Iterator[Batch]:
    """Normalised tile batches in row-major order. Tiles without a valid pixel are skipped
    (but counted, so progress moves); invalid pixels are set to the same neutral value (0,
    the normalised mean) in both dates so that they show no change to their neighbours."""
    picked: list[tuple[Tile, np.ndarray, np.ndarray, np.ndarray]] = []
    skipped = 0
    for tile in tiles:
        a1, a2, valid = pair.read(tile.window)
        if valid.any():
            picked.append((tile, a1, a2, valid))
        else:
            skipped += 1
        if len(picked) == batch_size or skipped >= SKIP_REPORT:
            yield _batch(picked, skipped, norms)
            picked, skipped = [], 0
    if picked or skipped:
        yield _batch(picked, skipped, norms)


class _Prefetcher:
    """Runs a batch generator in a daemon thread, at most ``PREFETCH`` batches ahead, so that
    reading and warping overlap with the network; errors surface in the consumer."""

    _END = object()

    def __init__(self, source: Iterator[Batch]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True,
                                        name="kdmsi-reader")
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self, source: Iterator[Batch]) -> None:
        try:
            for batch in source:
                if self._stop.is_set():
                    return
                self._put(batch)
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            try:
                item = self._queue.get(timeout=0.2)  # short waits keep signals responsive
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TileResults:
    """MSI probabilities of a run of tiles (row-major), and how many tiles it accounts for,
    counting the empty tiles that were skipped before them."""

    tiles: list[Tile]
    probability: np.ndarray | None
    valid: np.ndarray | None
    counted: int


def infer_batch(engine: Engine, t1: np.ndarray, t2: np.ndarray, scales: Sequence[float],
                flip: bool = True, refinement: Refinement | None = None) -> np.ndarray:
    """MSI probabilities (n, h, w) float32 of one normalised batch on ``engine``, refined
    along the images' edges when ``refinement`` says so (on the engine's device)."""
    with engine.running():
        x1, x2 = engine.inputs(t1, t2)
        prob = refine(msi(engine.network, x1, x2, scales, flip), x1, x2, refinement)
        return engine.numpy(prob[:, 0])


def local_results(engine: Engine, pair: RasterPair, tiles: list[Tile],
                  norms: tuple[Normalization, Normalization], scales: Sequence[float],
                  batch_size: int, refinement: Refinement | None = None
                  ) -> Iterator[TileResults]:
    """Tile results computed in this process.

    On a GPU a reader thread prepares the next batches while the network runs. On the CPU
    the batches are read in turn instead: the network already keeps every core busy, and a
    reader thread competing with it made whole runs about 10 % slower (bench/pipeline.py).
    """
    source = batches(pair, tiles, norms, batch_size)
    on_gpu = engine.device.startswith("cuda")
    with _Prefetcher(source) if on_gpu else nullcontext(source) as ready:
        for batch in ready:
            prob = (infer_batch(engine, batch.t1, batch.t2, scales, refinement=refinement)
                    if batch.tiles else None)
            yield TileResults(batch.tiles, prob, batch.valid,
                              len(batch.tiles) + batch.skipped)
