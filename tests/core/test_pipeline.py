"""End to end through ``detect``: placement, CRS, nodata, seams, 16-bit, cancellation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box

from kdmsi_core import detect
from kdmsi_core.checkpoint import default_model_path, read_card
from kdmsi_core.errors import Cancelled
from kdmsi_core.outputs import MASK_NODATA, PROBABILITY_NODATA
from kdmsi_train.synth import make_scene_pair
from tests.core.geodata import ORIGIN, scene, transform_for, write_tif
from tests.core.test_raster import reproject_file

X0, Y0 = ORIGIN
TRUTH = box(X0 + 40, Y0 - 100, X0 + 100, Y0 - 40)  # rows/cols 40..100 of the 1 m grid


def _polygons(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    _, _, wkb, fields = pyogrio.raw.read(path, layer="changes")
    return shapely.from_wkb(wkb), fields


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def test_change_is_found_on_t1_grid_with_valid_outputs(tmp_path: Path, pair,
                                                       difference_model: Path) -> None:
    out, mask = tmp_path / "changes.gpkg", tmp_path / "mask.tif"
    s = detect(*pair, out, model=difference_model, mask=mask, tile_size=96, overlap=32)
    assert s.probability == tmp_path / "changes_probability.tif" and s.probability_defaulted
    assert s.polygons == 1 and s.mask == mask and s.threshold == 0.75
    polys, fields = _polygons(out)
    assert _iou(polys[0], TRUTH) > 0.6 and shapely.is_valid(polys).all()
    assert s.changed_area_m2 == pytest.approx(fields[0].sum()) == pytest.approx(polys[0].area)
    assert 0.75 < fields[1][0] <= fields[2][0] <= 1
    with rasterio.open(pair[0]) as t1:
        for path in (s.probability, mask):
            assert cog_validate(path, strict=True)[0]
            with rasterio.open(path) as ds:
                assert (ds.crs, ds.transform, ds.shape) == (t1.crs, t1.transform, t1.shape)
    with rasterio.open(s.probability) as p:
        prob = p.read(1)
    assert prob[60:80, 60:80].min() > 0.9 and prob[140:, 140:].max() < 0.55
    assert sorted(x.name for x in tmp_path.iterdir()) == [
        "changes.gpkg", "changes_probability.tif", "mask.tif", "t1.tif", "t2.tif"]


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:32634"])
def test_t2_in_another_crs_gives_the_same_polygons(tmp_path: Path, pair, crs: str,
                                                    difference_model: Path) -> None:
    other = reproject_file(pair[1], tmp_path / "t2_other.tif", crs)
    aligned = detect(*pair, tmp_path / "a.gpkg", model=difference_model, tile_size=96,
                     overlap=32)
    warped = detect(pair[0], other, tmp_path / "b.gpkg", model=difference_model,
                    tile_size=96, overlap=32)
    pa, pb = _polygons(aligned.changes)[0], _polygons(warped.changes)[0]
    assert len(pa) == len(pb) == 1
    assert _iou(pa[0], pb[0]) > 0.9
    assert warped.changed_area_m2 == pytest.approx(aligned.changed_area_m2, rel=0.1)
    with rasterio.open(warped.probability) as ds, rasterio.open(pair[0]) as t1:
        assert ds.crs == t1.crs and ds.transform == t1.transform


def test_nodata_swath_is_nodata_and_never_a_polygon(tmp_path: Path,
                                                    difference_model: Path) -> None:
    t1, t2 = scene()
    t1[:, :, 60:80] = 0  # a nodata swath through the change, in t1 ...
    alpha = np.full((160, 160), 255, np.uint8)
    alpha[120:140, :] = 0  # ... and an alpha-masked band across t2
    a = write_tif(tmp_path / "t1.tif", t1, nodata=0)
    b = write_tif(tmp_path / "t2.tif", t2, alpha=alpha)
    s = detect(a, b, tmp_path / "c.gpkg", model=difference_model, tile_size=64, overlap=16,
               mask=tmp_path / "m.tif")
    with rasterio.open(s.probability) as p, rasterio.open(s.mask) as m:
        prob, mask = p.read(1), m.read(1)
    assert (prob[:, 60:80] == PROBABILITY_NODATA).all() and (mask[:, 60:80] == MASK_NODATA).all()
    assert (prob[120:140] == PROBABILITY_NODATA).all()
    assert (prob[:120, :60] >= 0).all() and (prob[:120, 80:] >= 0).all()
    polys, _ = _polygons(s.changes)
    swaths = [box(X0 + 60, Y0 - 160, X0 + 80, Y0), box(X0, Y0 - 140, X0 + 160, Y0 - 120)]
    assert len(polys) == 2  # the change, cut in two by the swath
    assert all(p.intersection(sw).area == 0 for p in polys for sw in swaths)


def test_partial_overlap_analyses_only_the_common_footprint(tmp_path: Path,
                                                            difference_model: Path) -> None:
    t1, t2 = scene((97, 61), changes=((10, 10, 50, 40),))
    a = write_tif(tmp_path / "t1.tif", t1)
    b = write_tif(tmp_path / "t2.tif", t2[:, 20:, :].copy(),
                  transform=transform_for(origin=(X0, Y0 - 20)))
    s = detect(a, b, tmp_path / "c.gpkg", model=difference_model)  # one odd-sized tile
    assert s.analysed == (0, 20, 61, 77) and (s.width, s.height) == (61, 97)
    with rasterio.open(s.probability) as p:
        prob = p.read(1)
    assert (prob[:20] == PROBABILITY_NODATA).all() and (prob[20:] >= 0).all()
    polys, _ = _polygons(s.changes)
    assert len(polys) == 1 and polys[0].bounds[3] <= Y0 - 20


@pytest.mark.parametrize(("model_fixture", "tolerance"),
                         [("difference_model", 0.03), ("random_model", 0.1)])
def test_no_seams_tiled_equals_one_tile(tmp_path: Path, request, model_fixture: str,
                                        tolerance: float) -> None:
    """A change straddling many tile borders (tile 64, step 32) gets the probabilities it
    gets when the whole image is one tile. The random network is the harsh case: its
    receptive field is the whole tile, so context really differs between the two runs."""
    model = request.getfixturevalue(model_fixture)
    t1, t2 = scene((192, 192), changes=((40, 50, 120, 110),))
    a, b = write_tif(tmp_path / "t1.tif", t1), write_tif(tmp_path / "t2.tif", t2)
    probs = []
    for name, tile, overlap in (("tiled", 64, 32), ("whole", 192, 0)):
        s = detect(a, b, tmp_path / f"{name}.gpkg", model=model, tile_size=tile,
                   overlap=overlap, scales=(0.5, 1.0, 2.0))
        with rasterio.open(s.probability) as p:
            probs.append(p.read(1))
    assert np.abs(probs[0] - probs[1]).max() < tolerance


def test_sixteen_bit_input_gives_the_eight_bit_result(tmp_path: Path, pair,
                                                      difference_model: Path) -> None:
    t1, t2 = scene()
    a = write_tif(tmp_path / "a16.tif", t1.astype(np.uint16) * 16 + 300)
    b = write_tif(tmp_path / "b16.tif", t2.astype(np.uint16) * 16 + 300)
    eight = detect(*pair, tmp_path / "e.gpkg", model=difference_model)
    sixteen = detect(a, b, tmp_path / "s.gpkg", model=difference_model)
    pe, ps = _polygons(eight.changes)[0], _polygons(sixteen.changes)[0]
    assert len(pe) == len(ps) == 1 and _iou(pe[0], ps[0]) > 0.9


class _CancelAfter:
    def __init__(self, batches: int) -> None:
        self.batches, self.updates = batches, []

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.updates.append((stage, done))

    def is_cancelled(self) -> bool:
        return sum(1 for s, d in self.updates if s == "detect" and d > 0) >= self.batches


def test_cancel_through_the_callback_stops_within_one_batch(tmp_path: Path, pair,
                                                            random_model: Path) -> None:
    progress = _CancelAfter(2)
    with pytest.raises(Cancelled, match="cancelled"):
        detect(*pair, tmp_path / "c.gpkg", model=random_model, tile_size=32, overlap=8,
                batch_size=2, progress=progress)
    batches = [d for s, d in progress.updates if s == "detect" and d > 0]
    assert batches == [2, 4]  # 49 tiles planned, stopped right after the asking batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.tif", "t2.tif"]


def test_default_model_puts_probability_where_the_change_is(tmp_path: Path) -> None:
    assert default_model_path().is_file()
    scene_pair = make_scene_pair(seed=4242, size=384, pixel_size=0.5)
    t = transform_for(0.5)
    a = write_tif(tmp_path / "t1.tif", scene_pair.t1, transform=t)
    b = write_tif(tmp_path / "t2.tif", scene_pair.t2, transform=t)
    s = detect(a, b, tmp_path / "c.gpkg", scales=(0.5, 1.0))
    with rasterio.open(s.probability) as p:
        prob = p.read(1)
    changed = scene_pair.mask.astype(bool)
    assert changed.any() and prob[changed].mean() > prob[~changed].mean() + 0.1
    polys, _ = _polygons(s.changes)
    truth = shapely.union_all([shapely.box(*rasterio.windows.bounds(
        rasterio.windows.Window(c, r, 1, 1), t)) for r, c in zip(*np.nonzero(changed),
                                                                 strict=True)][:5000])
    assert any(p.intersects(truth) for p in polys)


def test_refined_maps_are_cut_at_the_cards_refined_threshold(tmp_path: Path) -> None:
    card = read_card(default_model_path())
    assert card.refine.threshold is not None and card.refine.threshold != card.threshold
    scene_pair = make_scene_pair(seed=4243, size=160, pixel_size=0.5)
    t = transform_for(0.5)
    a = write_tif(tmp_path / "t1.tif", scene_pair.t1, transform=t)
    b = write_tif(tmp_path / "t2.tif", scene_pair.t2, transform=t)
    refined = detect(a, b, tmp_path / "r.gpkg", mask=tmp_path / "r.tif")
    raw = detect(a, b, tmp_path / "n.gpkg", mask=tmp_path / "n.tif", refine_radius=0)
    given = detect(a, b, tmp_path / "g.gpkg", mask=tmp_path / "g.tif", threshold=0.5,
                   min_area=0)
    assert refined.threshold == card.refine.threshold and raw.threshold == card.threshold
    assert given.threshold == 0.5  # an explicit threshold is taken as it is
    # no polygon under two cells of the segmenter's 4-px grid of 0.5-m pixels, unless asked
    assert refined.min_area == raw.min_area == 2 * (4 * 0.5) ** 2 and given.min_area == 0
    areas = {s.changes.stem: _polygons(s.changes)[1][0] for s in (refined, given)}
    assert areas["r"].min() >= 8 and areas["g"].min() < 8
    for s in (refined, raw, given):
        with rasterio.open(s.probability) as p, rasterio.open(s.mask) as m:
            prob, mask = p.read(1), m.read(1)
            assert p.tags()["kdmsi_threshold"] == str(s.threshold)
        assert np.array_equal(mask == 1, prob > s.threshold)


def test_default_batch_fills_a_cpu_pass_with_the_same_pixels_and_a_gpu_with_16() -> None:
    from kdmsi_core.inference import default_batch_size
    from kdmsi_core.tiling import Tile

    cpu, gpu = "cpu", "cuda:0"
    sizes = {s: default_batch_size(cpu, Tile(0, 0, s, s)) for s in (512, 256, 128, 64)}
    assert sizes == {512: 1, 256: 1, 128: 4, 64: 16}
    assert default_batch_size(gpu, Tile(0, 0, 256, 256)) == 16
