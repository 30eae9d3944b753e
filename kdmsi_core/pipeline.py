"""``detect``: two GeoTIFFs in, a COG probability raster and GeoPackage polygons out.

The flow is one way: open and align the pair, plan overlapping tiles over the overlap of
both footprints, read and normalise them (in a background thread while a GPU runs the
network), run batched MSI, blend the tiles into strips written as soon as they are final,
polygonise the stitched change raster, copy the rasters to COGs, and move everything into
place at once. Memory is bounded by the tile band and the batch, whatever the raster size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import rasterio

from kdmsi_core.engine import Engine, load_engine
from kdmsi_core.errors import InputError, ParameterError
from kdmsi_core.hysteresis import lower_threshold
from kdmsi_core.inference import TileResults, default_batch_size, local_results
from kdmsi_core.limits import SCALES_RULE, valid_scales, valid_threshold
from kdmsi_core.normalize import Normalization
from kdmsi_core.outputs import Staging, StripWriter, check_outputs, write_cog, write_errors
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_core.raster import RasterPair, absolute
from kdmsi_core.refine import Refinement, change_threshold, for_run
from kdmsi_core.resolution import ground_pixel_size, reduced_tiling, run_scales
from kdmsi_core.signals import stop_on_signals
from kdmsi_core.stitch import StripStitcher
from kdmsi_core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, Tile, check_tiling, plan_tiles
from kdmsi_core.vectorize import default_min_area, vectorize

GDAL_CACHE_MB = 256


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
    low_threshold: float
    min_area: float
    scales: tuple[float, ...]
    refine_radius: int
    tile_size: int
    overlap: int
    batch_size: int
    device: str
    crs: str
    width: int
    height: int
    analysed: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))
    probability_defaulted: bool = False
    engine: str = "torch"
    pixel_size_m: float | None = None
    """The ground size of t1's pixels (None where it cannot be told)."""
    resolution_factor: float = 1.0
    """What the model's scales were multiplied by to meet finer data at the resolution it
    learnt from (:mod:`~kdmsi_core.resolution`); 1 when they were not."""
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


def _check_parameters(threshold: float | None, low_threshold: float | None,
                      min_area: float | None,
                      batch_size: int | None, scales: Sequence[float] | None,
                      refine_radius: int | None) -> None:
    if threshold is not None and not valid_threshold(threshold):
        raise ParameterError(f"--threshold {threshold} is outside 0..1; a probability "
                             "threshold is needed.")
    if low_threshold is not None and not valid_threshold(low_threshold):
        raise ParameterError(f"--low-threshold {low_threshold} is outside 0..1; a probability "
                             "threshold is needed.")
    if min_area is not None and not 0 <= min_area < float("inf"):
        raise ParameterError(f"--min-area {min_area} is not an area; give a number of m² >= 0.")
    if batch_size is not None and batch_size < 1:
        raise ParameterError(f"--batch-size {batch_size} must be at least 1.")
    if scales is not None and not valid_scales(scales):
        raise ParameterError(f"--scales must list {SCALES_RULE}, for example 0.5,1,1.25,2.")
    for_run(None, refine_radius)  # refuses a bad radius before the model loads


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
                     pair: RasterPair, model: str | os.PathLike | None, engine: Engine,
                     device: str, norms: tuple[Normalization, Normalization],
                     scales: Sequence[float], batch_size: int, refinement: Refinement | None,
                     tiles: list[Tile]) -> Iterator[TileResults]:
    from kdmsi_core import distributed

    client, threads = cluster
    job = distributed.Job(
        t1=absolute(t1), t2=absolute(t2), bands=tuple(pair.bands),
        model=None if model is None else str(Path(model).resolve()), engine=engine.name,
        digest=distributed.file_digest(engine.path), device=device, threads=threads,
        norms=norms, scales=tuple(scales), batch_size=batch_size, refinement=refinement)
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
           low_threshold: float | None = None, refine_radius: int | None = None,
           min_area: float | None = None,
           tile_size: int | None = None, overlap: int | None = None,
           batch_size: int | None = None, match_resolution: bool = True,
           scales: Sequence[float] | None = None, bands: Sequence[int] | None = None,
           device: str = "auto", engine: str = "auto", overwrite: bool = False,
           workers: int | None = None, scheduler: str | None = None,
           progress: Progress | None = None) -> DetectSummary:
    """Detect changes from ``t1`` to ``t2`` on t1's grid.

    Writes the polygons (GeoPackage, layer ``changes``) to ``output``, the probability COG to
    ``probability`` (default ``<output stem>_probability.tif``) and, if asked, a binary mask
    COG. ``workers`` (a local Dask cluster of that many processes) or ``scheduler`` (the
    address of a running one) spread the tiles over Dask workers; the outputs are the same.
    ``threshold``, ``scales`` default to the checkpoint's (the refined maps' threshold
    where the run refines and the card has one); pixels above ``low_threshold``
    (at most the threshold; default the threshold: no growth) join a change they touch
    (:mod:`~kdmsi_core.hysteresis`); ``refine_radius`` replaces the radius of the model's
    edge-aware refinement (0: none; by default the card's, widened on imagery read at a
    reduced size: :func:`~kdmsi_core.refine.for_run`); ``min_area`` is in m²
    (default :func:`~kdmsi_core.vectorize.default_min_area`: two cells of the model's output
    grid at the pixel size it reads the imagery at);
    ``batch_size`` defaults to :func:`default_batch_size`. Imagery finer than the model's
    training data is read at the model's resolution (``match_resolution``; the scales, and
    the default tile and overlap, follow the ratio of pixel sizes; not with explicit
    ``scales``; :mod:`~kdmsi_core.resolution`). ``model`` is a ``.safetensors``
    checkpoint or an ``.onnx`` export; ``engine`` (auto, torch, onnxruntime) runs its network
    (:func:`~kdmsi_core.engine.load_engine`). Outputs appear only when all are
    complete; any error, cancellation or signal leaves none of them and no temporaries.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    _check_parameters(threshold, low_threshold, min_area, batch_size, scales, refine_radius)
    output = Path(output)
    prob_path = Path(probability) if probability is not None else default_probability_path(
        output)
    mask_path = Path(mask) if mask is not None else None
    check_outputs(output, prob_path, mask_path, [t1, t2], overwrite)
    runner = load_engine(model, engine, device)
    card = runner.card
    stride = card.network.output_stride
    check_tiling(DEFAULT_TILE_SIZE if tile_size is None else tile_size,
                 DEFAULT_OVERLAP if overlap is None else overlap, stride)
    # whether the run refines is known now; its radius once the imagery's pixel size is
    threshold = (change_threshold(card.threshold, for_run(card.refine, refine_radius))
                 if threshold is None else float(threshold))
    low = lower_threshold(threshold, low_threshold)
    targets = [output, prob_path] + ([mask_path] if mask_path else [])

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), stop_on_signals(), \
            _cluster(workers, scheduler) as cluster, \
            RasterPair(t1, t2, bands, card.network.in_channels) as pair, \
            Staging(targets, overwrite) as staging, write_errors(targets):
        grid = pair.grid
        pixel = ground_pixel_size(grid.crs, grid.transform, grid.width, grid.height)
        scales, factor = run_scales(card.scales, card.pixel_size, pixel, scales,
                                    match_resolution)
        refinement = for_run(card.refine, refine_radius, factor)
        radius = refinement.radius if refinement else 0
        if min_area is None:
            min_area = default_min_area(card.map_stride, pixel, factor)
        tile_size, overlap = reduced_tiling(
            DEFAULT_TILE_SIZE if tile_size is None else tile_size,
            DEFAULT_OVERLAP if overlap is None else overlap,
            factor if tile_size is None and overlap is None else 1.0, stride)
        tags = {"kdmsi_model": runner.path.name, "kdmsi_threshold": str(threshold),
                "kdmsi_low_threshold": str(low),
                "kdmsi_scales": ",".join(str(s) for s in scales),
                "kdmsi_resolution_factor": str(factor),
                "kdmsi_refine_radius": str(radius),
                "kdmsi_t1": Path(t1).name, "kdmsi_t2": Path(t2).name}
        progress.update("prepare", 0, 1, "estimating input ranges")
        norms = pair.normalizations(card.normalization)
        progress.update("prepare", 1, 1, "inputs ready")
        timings = {"prepare": time.perf_counter() - started}
        tiles = plan_tiles(pair.window, tile_size, overlap)
        batch_size = batch_size or default_batch_size(runner.device, tiles[0][0])
        scratch = {k: staging.scratch(f"{k}.tif") for k in ("probability", "changes", "mask")}
        writer = StripWriter(pair.grid, pair.window, threshold, low, scratch["probability"],
                             scratch["changes"], scratch["mask"] if mask_path else None, tags)
        try:
            stitcher = StripStitcher(pair.window, tiles[0][0].height, writer.write)
            flat = [t for row in tiles for t in row]
            if cluster is None:
                results = local_results(runner, pair, flat, norms, scales, batch_size,
                                        refinement)
            else:
                results = _cluster_results(cluster, t1, t2, pair, model, runner, device,
                                           norms, scales, batch_size, refinement, flat)
            with closing(results):
                stitch_results(results, len(flat), stitcher, progress)
            writer.finish()
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

    return DetectSummary(
        changes=output, probability=prob_path, mask=mask_path, polygons=polygons,
        changed_area_m2=area, seconds=round(time.perf_counter() - started, 3),
        model=runner.path, threshold=threshold, low_threshold=low, min_area=min_area,
        scales=scales,
        refine_radius=radius,
        tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=runner.device,
        engine=runner.name,
        crs=grid.crs.to_string(), width=grid.width, height=grid.height, analysed=analysed,
        probability_defaulted=probability is None,
        pixel_size_m=None if pixel is None else round(pixel, 6), resolution_factor=factor,
        timings={k: round(v, 3) for k, v in timings.items()})

