"""``detect``: two GeoTIFFs in, a COG probability raster and GeoPackage polygons out.

The flow is one way: open and align the pair, plan overlapping tiles over the overlap of
both footprints, read and normalise them (in a background thread while a GPU runs the
network), run batched MSI, blend the tiles into strips written as soon as they are final,
polygonise the stitched change raster, copy the rasters to COGs, and move everything into
place at once. Memory is bounded by the tile band and the batch, whatever the raster size.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch

from kdmsi_core.checkpoint import LoadedModel, default_model_path, load_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import CheckpointError, InputError, ParameterError
from kdmsi_core.limits import SCALES_RULE, valid_scales, valid_threshold
from kdmsi_core.model import for_inference
from kdmsi_core.msi import msi
from kdmsi_core.normalize import Normalization
from kdmsi_core.outputs import Staging, StripWriter, check_outputs, write_cog, write_errors
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_core.raster import RasterPair
from kdmsi_core.signals import stop_on_signals
from kdmsi_core.stitch import StripStitcher
from kdmsi_core.tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    Tile,
    check_tiling,
    plan_tiles,
)
from kdmsi_core.vectorize import vectorize

GDAL_CACHE_MB = 256
PREFETCH = 2
SKIP_REPORT = 64


@dataclass
class DetectSummary:
    """What a run produced, JSON-friendly through :meth:`to_dict`."""

    changes: Path
    probability: Path
    mask: Path | None
    polygons: int
    changed_area_m2: float
    seconds: float
    model: Path
    threshold: float
    scales: tuple[float, ...]
    tile_size: int
    overlap: int
    batch_size: int
    device: str
    crs: str
    width: int
    height: int
    analysed: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))
    probability_defaulted: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``prepare`` (open, model, ranges), ``infer`` (read, network,
    blend, strips), ``vectorize`` and ``cog``."""

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("changes", "probability", "mask", "model"):
            d[k] = None if d[k] is None else str(d[k])
        d["scales"], d["analysed"] = list(self.scales), list(self.analysed)
        return d


def default_probability_path(changes: Path) -> Path:
    """``changes.gpkg`` -> ``changes_probability.tif`` beside it."""
    return changes.with_name(f"{changes.stem}_probability.tif")


CPU_PIXELS_PER_PASS = 256 * 256
"""On the CPU the best batch holds about this many pixels (bench/msi.py: one 256-px tile,
four of 128 px, sixteen of 64 px); more only overflows the caches, fewer wastes time on
per-operation overhead."""


def default_batch_size(device: torch.device, tile: Tile) -> int:
    """Tiles per forward pass: 16 on a GPU, :data:`CPU_PIXELS_PER_PASS` worth on a CPU."""
    if device.type == "cuda":
        return 16
    return max(1, CPU_PIXELS_PER_PASS // (tile.height * tile.width))


def _check_parameters(threshold: float | None, min_area: float, batch_size: int | None,
                      scales: Sequence[float] | None) -> None:
    if threshold is not None and not valid_threshold(threshold):
        raise ParameterError(f"--threshold {threshold} is outside 0..1; a probability "
                             "threshold is needed.")
    if not 0 <= min_area < float("inf"):
        raise ParameterError(f"--min-area {min_area} is not an area; give a number of m² >= 0.")
    if batch_size is not None and batch_size < 1:
        raise ParameterError(f"--batch-size {batch_size} must be at least 1.")
    if scales is not None and not valid_scales(scales):
        raise ParameterError(f"--scales must list {SCALES_RULE}, for example 0.5,1,1.25,2.")


def load_model(model: str | os.PathLike | None, device: torch.device) -> LoadedModel:
    """The checkpoint (default: the embedded model) prepared for inference on ``device``."""
    if model is None and not default_model_path().is_file():
        raise CheckpointError("The embedded default model is missing from this installation; "
                              "reinstall kdmsi-geo or give a checkpoint with --model.")
    loaded = load_checkpoint(model, device)
    for_inference(loaded.model, device)
    return loaded


@dataclass
class _Batch:
    tiles: list[Tile]
    t1: torch.Tensor | None
    t2: torch.Tensor | None
    valid: np.ndarray | None
    skipped: int


def _batch(picked: list[tuple[Tile, np.ndarray, np.ndarray, np.ndarray]], skipped: int,
           norms: tuple[Normalization, Normalization], pin: bool) -> _Batch:
    if not picked:
        return _Batch([], None, None, None, skipped)
    valid = np.stack([p[3] for p in picked])
    keep = torch.from_numpy(valid)[:, None]
    x1 = norms[0].apply(torch.from_numpy(np.stack([p[1] for p in picked]))) * keep
    x2 = norms[1].apply(torch.from_numpy(np.stack([p[2] for p in picked]))) * keep
    if pin:  # page-locked memory lets the copy to the GPU run asynchronously
        x1, x2 = x1.pin_memory(), x2.pin_memory()
    return _Batch([p[0] for p in picked], x1, x2, valid, skipped)


def _batches(pair: RasterPair, tiles: list[Tile], norms: tuple[Normalization, Normalization],
             batch_size: int, pin: bool = False) -> Iterator[_Batch]:
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
            yield _batch(picked, skipped, norms, pin)
            picked, skipped = [], 0
    if picked or skipped:
        yield _batch(picked, skipped, norms, pin)


class _Prefetcher:
    """Runs a batch generator in a daemon thread, at most ``PREFETCH`` batches ahead, so that
    reading and warping overlap with the network; errors surface in the consumer."""

    _END = object()

    def __init__(self, batches: Iterator[_Batch]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True,
                                        name="kdmsi-reader")
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self, batches: Iterator[_Batch]) -> None:
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                self._put(batch)
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def __iter__(self) -> Iterator[_Batch]:
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


def infer_batch(model: torch.nn.Module, device: torch.device, t1: torch.Tensor,
                t2: torch.Tensor, scales: Sequence[float]) -> np.ndarray:
    """MSI probabilities (n, h, w) float32 of one normalised batch, with float16 autocast on
    CUDA (the network, prepared by :func:`load_model`, sets its own memory layout)."""
    amp = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
           else nullcontext())
    with torch.inference_mode(), amp:
        x1, x2 = t1.to(device, non_blocking=True), t2.to(device, non_blocking=True)
        return msi(model, x1, x2, scales)[:, 0].float().cpu().numpy()


def local_results(loaded: LoadedModel, pair: RasterPair, tiles: list[Tile],
                  norms: tuple[Normalization, Normalization], scales: Sequence[float],
                  batch_size: int) -> Iterator[TileResults]:
    """Tile results computed in this process.

    On a GPU a reader thread prepares the next batches while the network runs. On the CPU
    the batches are read in turn instead: the network already keeps every core busy, and a
    reader thread competing with it made whole runs about 10 % slower (bench/pipeline.py).
    """
    on_gpu = loaded.device.type == "cuda"
    batches = _batches(pair, tiles, norms, batch_size, pin=on_gpu)
    source = _Prefetcher(batches) if on_gpu else nullcontext(batches)
    with source as ready:
        for batch in ready:
            prob = (infer_batch(loaded.model, loaded.device, batch.t1, batch.t2, scales)
                    if batch.tiles else None)
            yield TileResults(batch.tiles, prob, batch.valid,
                              len(batch.tiles) + batch.skipped)


@contextmanager
def _cluster(workers: int | None, scheduler: str | None) -> Iterator[tuple | None]:
    """A Dask client and per-worker torch threads when asked for, else None."""
    if workers is None and scheduler is None:
        yield None
        return
    from kdmsi_core import distributed

    with distributed.connect(workers, scheduler) as cluster:
        yield cluster


def _cluster_results(cluster: tuple, t1: str | os.PathLike, t2: str | os.PathLike,
                     pair: RasterPair, model: str | os.PathLike | None, loaded: LoadedModel,
                     device: str, norms: tuple[Normalization, Normalization],
                     scales: Sequence[float], batch_size: int,
                     tiles: list[Tile]) -> Iterator[TileResults]:
    from kdmsi_core import distributed

    client, threads = cluster
    job = distributed.Job(
        t1=str(Path(t1).resolve()), t2=str(Path(t2).resolve()), bands=tuple(pair.bands),
        model=None if model is None else str(loaded.path.resolve()),
        digest=distributed.file_digest(loaded.path), device=device, threads=threads,
        norms=norms, scales=tuple(scales), batch_size=batch_size)
    return distributed.cluster_results(client, job, tiles)


def stitch_results(results: Iterator[TileResults], total: int, stitcher: StripStitcher,
                   progress: Progress) -> None:
    """Blend results into the stitcher as they come, reporting progress per batch."""
    done, seen = 0, False
    progress.update("detect", 0, total, f"{total} tiles")
    for r in results:
        if r.tiles:
            seen = True
            for tile, p, v in zip(r.tiles, r.probability, r.valid, strict=True):
                stitcher.add(tile, p, v)
        done += r.counted
        progress.update("detect", done, total, f"{done}/{total} tiles")
        check_cancelled(progress)
    if not seen:
        raise InputError("t1 and t2 have no valid pixel in common: where their footprints "
                         "overlap, one of them is nodata throughout; check both inputs.")
    stitcher.finish()


def detect(t1: str | os.PathLike, t2: str | os.PathLike, output: str | os.PathLike, *,
           probability: str | os.PathLike | None = None, mask: str | os.PathLike | None = None,
           model: str | os.PathLike | None = None, threshold: float | None = None,
           min_area: float = 0.0, tile_size: int = DEFAULT_TILE_SIZE,
           overlap: int = DEFAULT_OVERLAP, batch_size: int | None = None,
           scales: Sequence[float] | None = None, bands: Sequence[int] | None = None,
           device: str = "auto", overwrite: bool = False, workers: int | None = None,
           scheduler: str | None = None, progress: Progress | None = None) -> DetectSummary:
    """Detect changes from ``t1`` to ``t2`` on t1's grid.

    Writes the polygons (GeoPackage, layer ``changes``) to ``output``, the probability COG to
    ``probability`` (default ``<output stem>_probability.tif``) and, if asked, a binary mask
    COG. ``workers`` (a local Dask cluster of that many processes) or ``scheduler`` (the
    address of a running one) spread the tiles over Dask workers; the outputs are the same.
    ``threshold``, ``scales`` default to the checkpoint's; ``min_area`` is in m²;
    ``batch_size`` defaults to :func:`default_batch_size`. Outputs appear only when all are
    complete; any error, cancellation or signal leaves none of them and no temporaries.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    _check_parameters(threshold, min_area, batch_size, scales)
    output = Path(output)
    prob_path = Path(probability) if probability is not None else default_probability_path(
        output)
    mask_path = Path(mask) if mask is not None else None
    check_outputs(output, prob_path, mask_path, [t1, t2], overwrite)
    torch_device = resolve_device(device)
    loaded = load_model(model, torch_device)
    card = loaded.card
    check_tiling(tile_size, overlap, card.network.output_stride)
    threshold = card.threshold if threshold is None else float(threshold)
    scales = tuple(card.scales if scales is None else (float(s) for s in scales))
    targets = [output, prob_path] + ([mask_path] if mask_path else [])
    tags = {"kdmsi_model": loaded.path.name, "kdmsi_threshold": str(threshold),
            "kdmsi_scales": ",".join(str(s) for s in scales),
            "kdmsi_t1": Path(t1).name, "kdmsi_t2": Path(t2).name}

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), stop_on_signals(), \
            _cluster(workers, scheduler) as cluster, \
            RasterPair(t1, t2, bands, card.network.in_channels) as pair, \
            Staging(targets, overwrite) as staging, write_errors(targets):
        progress.update("prepare", 0, 1, "estimating input ranges")
        norms = pair.normalizations(card.normalization)
        progress.update("prepare", 1, 1, "inputs ready")
        timings = {"prepare": time.perf_counter() - started}
        tiles = plan_tiles(pair.window, tile_size, overlap)
        batch_size = batch_size or default_batch_size(torch_device, tiles[0][0])
        scratch = {k: staging.scratch(f"{k}.tif") for k in ("probability", "changes", "mask")}
        writer = StripWriter(pair.grid, pair.window, threshold, scratch["probability"],
                             scratch["changes"], scratch["mask"] if mask_path else None, tags)
        try:
            stitcher = StripStitcher(pair.window, tiles[0][0].height, writer.write)
            flat = [t for row in tiles for t in row]
            if cluster is None:
                results = local_results(loaded, pair, flat, norms, scales, batch_size)
            else:
                results = _cluster_results(cluster, t1, t2, pair, model, loaded, device,
                                           norms, scales, batch_size, flat)
            with closing(results):
                stitch_results(results, len(flat), stitcher, progress)
        finally:
            writer.close()
        check_cancelled(progress)
        timings["infer"] = time.perf_counter() - started - sum(timings.values())
        polygons, area = vectorize(scratch["changes"], scratch["probability"],
                                   staging.staged(output), min_area, progress)
        timings["vectorize"] = time.perf_counter() - started - sum(timings.values())
        progress.update("write", 0, 1, "writing Cloud Optimized GeoTIFF(s)")
        write_cog(scratch["probability"], staging.staged(prob_path), "AVERAGE")
        if mask_path:
            write_cog(scratch["mask"], staging.staged(mask_path), "NEAREST")
        progress.update("write", 1, 1, "outputs complete")
        check_cancelled(progress)
        staging.commit()
        timings["cog"] = time.perf_counter() - started - sum(timings.values())
        w = pair.window
        analysed = (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
        grid = pair.grid

    return DetectSummary(
        changes=output, probability=prob_path, mask=mask_path, polygons=polygons,
        changed_area_m2=area, seconds=round(time.perf_counter() - started, 3),
        model=loaded.path, threshold=threshold, scales=scales, tile_size=tile_size,
        overlap=overlap, batch_size=batch_size, device=str(torch_device),
        crs=grid.crs.to_string(), width=grid.width, height=grid.height, analysed=analysed,
        probability_defaulted=probability is None,
        timings={k: round(v, 3) for k, v in timings.items()})

