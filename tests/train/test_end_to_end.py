"""A small model trained briefly on generated tiles must localise change, and a saved
checkpoint must reproduce the trained network's probabilities exactly.

The tiles come from the easy set in ``data/toy.py`` so that training fits a test's time;
accuracy on the realistic generated scenes is measured by ``bench/accuracy.py``."""

import numpy as np
import pytest
import torch

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.model import place
from kdmsi_core.msi import msi
from kdmsi_train.datasets import PairStore, TileFolder
from kdmsi_train.evaluate import evaluate
from kdmsi_train.fit import fit_tile_folder
from kdmsi_train.metrics import Confusion
from kdmsi_train.trainer import TrainConfig
from tests.train.data.toy import write_toy_tiles


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    tiles = write_toy_tiles(work / "data", tiles=480, size=64, seed=11)
    config = TrainConfig(init="scratch", epochs=10, batch_size=16, lr=3e-3, seed=0)
    return tiles, fit_tile_folder(tiles, work / "m.safetensors", config, keep_teacher=True)


@pytest.mark.slow
def test_msi_localises_change_far_better_than_all_changed(trained):
    tiles, fitted = trained
    results = evaluate(tiles, fitted.path, "test", scales=(0.5, 1.0, 2.0))
    folder = TileFolder.open(tiles, "test", need_labels=False, need_masks=True)
    everything = Confusion()
    for i in range(len(folder)):
        truth = folder.mask(i)
        everything.update(np.ones_like(truth), truth)
    baseline = everything.metrics()["f1"]
    f1 = results["methods"]["msi"]["f1"]
    assert baseline > 0.02  # the split has change to find
    assert f1 > 2.5 * baseline and f1 > baseline + 0.2, (f1, baseline)


@pytest.mark.slow
def test_checkpoint_roundtrip_reproduces_probabilities(trained):
    tiles, fitted = trained
    store = PairStore(TileFolder.open(tiles, "val"))
    a, b = store.batch(np.arange(6))
    loaded = load_checkpoint(fitted.path)
    place(loaded.model, torch.device("cpu"))  # the memory layout training used
    norm = loaded.card.normalization
    assert norm == fitted.result.normalization
    x1, x2 = norm.apply(torch.from_numpy(a)), norm.apply(torch.from_numpy(b))
    trained_student = fitted.result.student.eval()
    with torch.inference_mode():
        p_trained = msi(trained_student, x1, x2, fitted.card.scales)
        p_loaded = msi(loaded.model, x1, x2, loaded.card.scales)
    assert torch.equal(p_trained, p_loaded)
    assert p_trained.std() > 0  # a real map, not a constant
    assert loaded.card.threshold == fitted.card.threshold
    assert loaded.card.training["train_changed"] > 0
