"""Detection over a Dask cluster: blocks of tiles run on workers, the results come back here.

The grid's tiles (already overlapping, so each carries what seamless blending needs) are
cut, in row-major order, into blocks. A worker runs a block exactly as a single process runs
its tiles, with one model and one open pair kept per worker process between blocks, and
returns each tile's probabilities; this process blends them through the same stitcher and
writes the same outputs, so both paths agree to float rounding. Blocks are consumed in
order with a bounded number in flight, which bounds the memory held here.

Workers need the ``kdmsi-geo[dask]`` install, read access to both inputs at the same paths
and the checkpoint (the embedded default model is their own copy, checked by its digest).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdmsi_core.errors import CheckpointError, InputError, ParameterError
from kdmsi_core.normalize import Normalization
from kdmsi_core.refine import Refinement
from kdmsi_core.tiling import Tile

if TYPE_CHECKING:
    from distributed import Client

    from kdmsi_core.inference import TileResults

BLOCK_TILES = 8
"""Tiles per block: enough to amortise a task's overhead, few enough to balance the load."""

IN_FLIGHT_PER_WORKER = 2
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
CONNECT_TIMEOUT = "10s"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides its tiles; small and picklable."""

    t1: str
    t2: str
    bands: tuple[int, ...] | None
    model: str | None  # None: the worker's embedded default model
    engine: str  # what ``auto`` chose here, so that every worker runs the same
    digest: str  # of the file the engine runs
    device: str
    threads: int | None
    norms: tuple[Normalization, Normalization]
    scales: tuple[float, ...]
    batch_size: int
    refinement: Refinement | None


def file_digest(path: Path) -> str:
    """SHA-256 of a model file, so that a worker holding another model is refused."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_worker: dict[str, object] = {}
"""Per worker process: the model and the open pair of the current job."""


def _let_malloc_reuse_memory() -> None:
    """Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, which also freezes
    glibc's mmap threshold at 128 KiB: every activation is then mapped and unmapped afresh,
    and the network ran 1.8 times slower than in a plain process. Raise both thresholds."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library: nothing to undo
        return
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)


def _worker_state(job: Job) -> tuple[object, object]:
    from kdmsi_core.engine import load_engine
    from kdmsi_core.raster import RasterPair

    if "model_key" not in _worker:
        _let_malloc_reuse_memory()
    threads = job.threads or _threads_per_task()
    model_key = (job.model, job.engine, job.digest, job.device, threads)
    if _worker.get("model_key") != model_key:
        _worker.pop("model", None)
        engine = load_engine(job.model, job.engine, job.device, threads)
        if file_digest(engine.path) != job.digest:
            raise CheckpointError(f"The Dask worker's model file {engine.path} differs from "
                                  "the one given; give every worker the same model.")
        _worker["model"] = engine
        _worker["model_key"] = model_key
    pair_key = (job.t1, job.t2, job.bands)
    if _worker.get("pair_key") != pair_key:
        old = _worker.pop("pair", None)
        if old is not None:
            old.close()
        loaded = _worker["model"]
        _worker["pair"] = RasterPair(job.t1, job.t2, job.bands,
                                     loaded.card.network.in_channels)
        _worker["pair_key"] = pair_key
    return _worker["model"], _worker["pair"]


def _threads_per_task() -> int:
    """The worker machine's cores shared among the tasks its worker runs at once."""
    from distributed import get_worker

    try:
        tasks = get_worker().state.nthreads
    except (ValueError, AttributeError):  # not inside a worker, or another layout
        tasks = 1
    return max(1, (os.cpu_count() or 1) // max(1, tasks))


def run_block(job: Job, tiles: Sequence[Tile]) -> list[TileResults]:
    """Worker side: the results of ``tiles``, computed as the single-process path does."""
    import rasterio

    from kdmsi_core.inference import local_results
    from kdmsi_core.pipeline import GDAL_CACHE_MB

    loaded, pair = _worker_state(job)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return list(local_results(loaded, pair, list(tiles), job.norms, job.scales,
                                  job.batch_size, job.refinement))


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ParameterError("--workers and --scheduler need Dask; install it with "
                             "pip install 'kdmsi-geo[dask]'.") from None
    return distributed


@contextmanager
def connect(workers: int | None, scheduler: str | None) -> Iterator[tuple[Client, int | None]]:
    """A client of an existing scheduler, or of a local cluster of ``workers`` processes;
    also the network threads each local worker should use (None: leave the worker's own)."""
    if workers is not None and scheduler is not None:
        raise ParameterError("Give either --workers (a local cluster) or --scheduler (an "
                             "existing one), not both.")
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers {workers} must be at least 1.")
    distributed = _import_distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}); "
                             "check the address and that the scheduler runs.") from None
        with client:
            yield client, None
        return
    import logging

    threads = max(1, (os.cpu_count() or 1) // workers)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        yield client, threads


def blocks(tiles: list[Tile], size: int = BLOCK_TILES) -> list[list[Tile]]:
    """Consecutive runs of ``size`` tiles in row-major order."""
    return [tiles[i:i + size] for i in range(0, len(tiles), size)]


def cluster_results(client: Client, job: Job, tiles: list[Tile]) -> Iterator[TileResults]:
    """Tile results computed on the cluster, yielded in row-major order."""
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = IN_FLIGHT_PER_WORKER * workers
    todo = deque(blocks(tiles))
    running: deque = deque()
    try:
        while todo or running:
            while todo and len(running) < limit:
                running.append(client.submit(run_block, job, todo.popleft(), pure=False))
            yield from running.popleft().result()
    finally:
        for future in running:
            future.cancel()
