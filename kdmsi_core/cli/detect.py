"""``kdmsi-geo detect``: a thin layer over :func:`kdmsi_core.pipeline.detect`."""

from __future__ import annotations

import click

from kdmsi_core.cli import options
from kdmsi_core.progress import make_progress, report_done
from kdmsi_core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE


def summary_message(summary: dict) -> str:
    """One line a person can read: what was found and where everything went."""
    prob = summary["probability"] + (" (default path)" if summary["probability_defaulted"]
                                     else "")
    least = (f" of at least {summary['min_area']:.3g} m²" if summary["min_area"] > 0
             else "")
    text = (f"{summary['polygons']} change polygon(s){least}, {summary['changed_area_m2']:.1f} "
            f"m² in all, written to {summary['changes']}; probability: {prob}")
    if summary["mask"]:
        text += f"; mask: {summary['mask']}"
    return text + f"; {summary['seconds']:.1f} s."


@click.command("detect", short_help="Detect changes between two rasters of the same place.")
@click.argument("t1", type=click.Path(readable=False))
@click.argument("t2", type=click.Path(readable=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Change polygons: a GeoPackage (.gpkg), layer 'changes'.")
@click.option("--probability", type=click.Path(), default=None,
              help="Probability raster, a Cloud Optimized GeoTIFF "
                   "[default: <output stem>_probability.tif beside the GeoPackage].")
@click.option("--mask", type=click.Path(), default=None,
              help="Optional binary change mask, a Cloud Optimized GeoTIFF "
                   "(1 change, 0 none, 255 nodata).")
@options.model_opt
@click.option("--threshold", type=float, default=None,
              help="Probability above which a pixel is change, 0..1 "
                   "[default: the checkpoint's calibrated threshold, its refined maps' "
                   "where it has one and refines].")
@click.option("--low-threshold", type=float, default=None,
              help="Pixels above this lower probability join a change they touch within 8 "
                   "pixels; 0..threshold. On the refined maps it mostly costs accuracy: try "
                   "it, close to the threshold, where changes come out fragmented "
                   "[default: the threshold, plain thresholding].")
@options.refine_radius_opt
@click.option("--min-area", type=float, default=None,
              help="Drop polygons smaller than this many m² (true areas for a geographic CRS) "
                   "[default: 2 cells of the model's output grid at the pixel size it reads "
                   "the imagery at, 8 m² for the default model at 0.5 m and finer; 0 keeps "
                   "everything].")
@click.option("--tile-size", type=int, default=None,
              help=f"Tile side in pixels [default: {DEFAULT_TILE_SIZE}; larger on imagery "
                   "finer than the model's, see --native-resolution].")
@click.option("--overlap", type=int, default=None,
              help=f"Pixels shared by neighbouring tiles and blended [default: "
                   f"{DEFAULT_OVERLAP}; more with larger tiles].")
@options.batch_size_opt
@options.scales_opt
@click.option("--native-resolution", is_flag=True,
              help="Run the model on the pixels as they are. By default imagery finer than "
                   "the model's training data (e.g. 0.15 m for a model trained at 0.5 m) is "
                   "read at the model's resolution, where it finds more; the outputs stay "
                   "on T1's grid either way.")
@options.bands_opt
@options.device_opt
@options.engine_opt
@click.option("--workers", type=click.IntRange(1), default=None, metavar="N",
              help="Run the tiles on a local Dask cluster of N worker processes "
                   "(needs kdmsi-geo[dask]).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the tiles on an existing Dask cluster, e.g. tcp://10.0.0.5:8786; "
                   "its workers must read T1, T2 and the model at the same paths.")
@options.overwrite_opt
@options.progress_opt
def command(t1: str, t2: str, output: str, probability: str | None, mask: str | None,
            model: str | None, threshold: float | None, low_threshold: float | None,
            refine_radius: int | None, min_area: float | None, tile_size: int | None,
            overlap: int | None, batch_size: int | None, scales: tuple[float, ...] | None,
            native_resolution: bool,
            bands: tuple[int, ...] | None, device: str, engine: str, workers: int | None,
            scheduler: str | None, overwrite: bool, progress_kind: str) -> None:
    """Detect changes from T1 to T2 (GeoTIFFs of the same place, any size).

    The outputs lie on T1's grid; T2 is resampled onto it when needed. Only the overlap of
    both footprints with valid data is analysed; everything else is nodata.
    """
    from kdmsi_core.pipeline import detect

    progress = make_progress(progress_kind)
    try:
        summary = detect(t1, t2, output, probability=probability, mask=mask, model=model,
                         threshold=threshold, low_threshold=low_threshold,
                         refine_radius=refine_radius,
                         min_area=min_area, tile_size=tile_size, overlap=overlap,
                         batch_size=batch_size, scales=scales, bands=bands,
                         match_resolution=not native_resolution,
                         device=device, engine=engine, overwrite=overwrite, workers=workers,
                         scheduler=scheduler, progress=progress)
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    record = summary.to_dict()
    report_done(progress, summary_message(record), record)
