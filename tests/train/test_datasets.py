import numpy as np
import pytest
from click.testing import CliRunner

from kdmsi_core.cli.main import cli
from kdmsi_core.errors import DataError
from kdmsi_train.datasets import PairStore, TileFolder
from tests.train.data.toy import write_png


def make_folder(root, n=4, size=32, b_size=None, labels=True):
    for sub in ("A", "B", "label", "list"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"t{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        write_png(root / "A" / name, rng.integers(0, 255, (3, size, size), dtype=np.uint8))
        bs = b_size if (b_size and i == n - 1) else size
        write_png(root / "B" / name, rng.integers(0, 255, (3, bs, bs), dtype=np.uint8))
        write_png(root / "label" / name, np.full((1, size, size), 255 * (i % 2), np.uint8))
    (root / "list" / "train.txt").write_text("\n".join(names) + "\n")
    if labels:
        (root / "list" / "train_label.txt").write_text(
            "".join(f"{n},x,{i % 2}\n" for i, n in enumerate(names)))
    return names


def test_reads_layout_labels_and_masks(tmp_path):
    names = make_folder(tmp_path)
    folder = TileFolder.open(tmp_path, "train")
    assert folder.names == names
    assert folder.labels.tolist() == [0, 1, 0, 1]
    assert folder.mask(1).all() and not folder.mask(0).any()
    store = PairStore(folder)
    a, b = store.batch(np.array([1, 3]))
    assert a.shape == (2, 3, 32, 32) and a.dtype == np.uint8


@pytest.mark.parametrize("breakage, message", [
    (lambda r: __import__("shutil").rmtree(r / "A"), "no A/ folder"),
    (lambda r: (r / "list" / "train.txt").unlink() or
     (r / "list" / "train_label.txt").unlink(), "no list/train.txt"),
    (lambda r: (r / "list" / "train_label.txt").write_text("t0.png,yes\n"), "does not parse"),
    (lambda r: (r / "list" / "train_label.txt").unlink(), "image-level labels"),
])
def test_bad_layouts(tmp_path, breakage, message):
    make_folder(tmp_path)
    breakage(tmp_path)
    with pytest.raises(DataError, match=message):
        TileFolder.open(tmp_path, "train")


def test_tiles_of_different_sizes_between_dates(tmp_path):
    make_folder(tmp_path, b_size=16)
    with pytest.raises(DataError, match="differ in size"):
        PairStore(TileFolder.open(tmp_path, "train"))


def test_cli_train_bad_input_exits_nonzero_and_writes_nothing(tmp_path):
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "list" / "train_label.txt").write_text("t0.png\n")
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "data"), "-o", str(out),
                                      "--progress", "none"])
    assert result.exit_code != 0
    assert "Error: Line 1" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
