"""Pseudo labels: the rule (unchanged pairs all background, ignore band, only the core of a
blob is change, unplaceable changed pairs ignored), thresholds from image labels recorded
beside the masks, palette PNGs in the tile-folder layout, and no pixel mask read: the data
folder here has no label/ at all."""

import json
import warnings

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from kdmsi_core.cli.main import cli
from kdmsi_core.errors import OutputError
from kdmsi_train import threshold
from kdmsi_train.pseudo import (
    BACKGROUND,
    CHANGE,
    IGNORE,
    pseudo_mask,
    read_mask,
    thresholds,
    write_pseudo_labels,
)
from tests.core.geodata import difference_checkpoint, texture
from tests.train.data.toy import write_png

SIZE = 64


def _write_pairs(root, pairs):
    """pairs: (name, changed_square or None, image label, faint): ``faint`` grey levels added
    to a square of t2 away from the changes, a difference too weak to be change (unchanged
    pairs are never identical in practice); no label/ folder."""
    for sub in ("A", "B", "list"):
        (root / sub).mkdir(parents=True)
    lines = []
    for i, (name, square, label, faint) in enumerate(pairs):
        t1 = texture((SIZE, SIZE), seed=i)
        t2 = t1.copy()
        t2[:, 40:56, 40:56] += np.uint8(faint)
        if square is not None:
            r, c, s = square
            t2[:, r:r + s, c:c + s] = 250
        write_png(root / "A" / name, t1)
        write_png(root / "B" / name, t2)
        lines.append(f"{name},{label}")
    (root / "list" / "train_label.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    work = tmp_path_factory.mktemp("pseudo")
    data = _write_pairs(work / "data", [
        ("u0.png", None, 0, 3), ("u1.png", None, 0, 6), ("u2.png", None, 0, 9),
        ("c0.png", (8, 8, 24), 1, 0), ("c1.png", (30, 20, 28), 1, 0),
        ("lost.png", None, 1, 0),  # labelled changed, but the map finds nothing
    ])
    model = difference_checkpoint(work / "difference.safetensors")
    summary = write_pseudo_labels(data, model, work / "pseudo", device="cpu")
    return data, work / "pseudo", summary


def test_rule_on_one_map():
    prob = np.array([[0.05, 0.2], [0.5, 0.9]], np.float32)
    assert (pseudo_mask(prob, 0.0, 0.6, 0.1) == BACKGROUND).all()
    assert pseudo_mask(prob, 1.0, 0.6, 0.1).tolist() == [[BACKGROUND, IGNORE],
                                                         [IGNORE, CHANGE]]
    assert (pseudo_mask(prob, 1.0, 0.95, 0.1) == IGNORE).all()  # nothing reaches t_high


def test_only_the_core_of_a_blob_is_change():
    """Above t_high but under half the pair's peak: the blob's skirt, left to the segmenter."""
    prob = np.array([[0.05, 0.2], [0.4, 0.9]], np.float32)
    assert pseudo_mask(prob, 1.0, 0.3, 0.1).tolist() == [[BACKGROUND, IGNORE],
                                                         [IGNORE, CHANGE]]
    weak = prob / 2  # a fainter blob: its core is measured against its own peak
    assert pseudo_mask(weak, 1.0, 0.15, 0.01).tolist() == [[IGNORE, IGNORE],
                                                           [IGNORE, CHANGE]]


def test_thresholds_follow_the_calibration_rule():
    hist = threshold.Histograms()
    rng = np.random.default_rng(0)
    unchanged = rng.uniform(0.0, 0.2, (4, 32, 32))
    changed = np.concatenate([rng.uniform(0.0, 0.2, (4, 32, 16)),
                              rng.uniform(0.7, 1.0, (4, 32, 16))], axis=2)
    hist.update(np.concatenate([unchanged, changed]), np.array([0] * 4 + [1] * 4))
    high, low = thresholds(hist)
    assert high == threshold.calibrate(hist)
    # Above nearly every unchanged pair's peak, below the changed pairs' change population.
    assert 0.19 <= high < 0.7
    assert low == pytest.approx(0.19, abs=0.005)  # 95 % of the unchanged pixels lie below
    assert low <= high


def test_masks_follow_the_rule(labelled):
    data, out, summary = labelled
    assert not (data / "label").exists()
    for name in ("u0.png", "u1.png", "u2.png"):
        assert (read_mask(out, name) == BACKGROUND).all()
    assert (read_mask(out, "lost.png") == IGNORE).all()
    c0 = read_mask(out, "c0.png")
    assert (c0[20:28, 16:28] == CHANGE).all()  # inside the square
    assert (c0[56:, 56:] == BACKGROUND).all()  # far from it
    assert (c0 == IGNORE).any()  # the uncertain rim
    assert set(np.unique(c0)) == {BACKGROUND, CHANGE, IGNORE}
    assert summary["changed_pairs_all_ignored"] == 1
    assert summary["t_low"] < summary["t_high"]
    assert sum(summary["fractions"].values()) == pytest.approx(1.0)


def test_folder_layout_and_recorded_thresholds(labelled):
    data, out, summary = labelled
    recorded = json.loads((out / "pseudo.json").read_text())
    assert recorded == summary
    assert recorded["rule"].startswith("unchanged pairs: all background")
    assert 0 < recorded["t_low"] < recorded["t_high"] < 1
    names = sorted(p.name for p in (data / "A").iterdir())
    assert sorted(p.name for p in (out / "A").iterdir()) == names
    assert sorted(p.name for p in (out / "pseudo").iterdir()) == names
    assert (out / "list" / "train_label.txt").read_text() == \
        (data / "list" / "train_label.txt").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out / "pseudo" / "c0.png") as ds:
            assert ds.driver == "PNG" and ds.count == 1 and ds.dtypes[0] == "uint8"
            assert ds.colormap(1)[CHANGE][:3] == (255, 255, 255)
            assert ds.colormap(1)[IGNORE][:3] == (128, 128, 128)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".kdmsi-")]


def test_cli_writes_and_refuses_to_overwrite(labelled, tmp_path):
    data, _, _ = labelled
    model = difference_checkpoint(tmp_path / "d.safetensors")
    out = tmp_path / "labels"
    args = ["pseudo-label", str(data), "--model", str(model), "-o", str(out), "--device", "cpu",
            "--progress", "none"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "pseudo.json").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == OutputError.exit_code
    assert "already exists" in again.output
    with pytest.raises(OutputError, match="data folder itself"):
        write_pseudo_labels(data, model, data, overwrite=True)
