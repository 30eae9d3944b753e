"""Workspaces for the hostile-input matrix: inputs, old outputs, and the two guarantees.

Every case runs in a fresh workspace holding the inputs in ``in/`` and the previous run's
outputs in ``out/`` (``c.gpkg``, ``c_probability.tif``, ``m.tif``, with recognisable old
bytes). After the case, :meth:`Workspace.check` asserts the two guarantees of the README:
no input file changed, and the old outputs changed only if the run was given --overwrite
and completed (and then nothing else was left in ``out/``: no temporaries, no lock files).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from kdmsi_core.cli.main import cli
from tests.core.geodata import scene, write_tif

KDMSI = Path(sys.executable).with_name("kdmsi-geo")
OLD = {"c.gpkg": b"old polygons", "c_probability.tif": b"old probability",
       "m.tif": b"old mask"}


def digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and ``dir`` for folders) under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = "dir" if p.is_dir() and not p.is_symlink() else (
            "link:" + os.readlink(p) if p.is_symlink() else
            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    warned: list[str] = field(default_factory=list)


@dataclass
class Workspace:
    """A case's folders and the state the guarantees are checked against."""

    root: Path
    model: Path
    inputs_before: dict[str, str] = field(default_factory=dict)
    outputs_before: dict[str, str] = field(default_factory=dict)

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @classmethod
    def make(cls, root: Path, model: Path) -> Workspace:
        ws = cls(root, model)
        ws.inp.mkdir()
        ws.out.mkdir()
        t1, t2 = scene()
        write_tif(ws.inp / "t1.tif", t1)
        write_tif(ws.inp / "t2.tif", t2)
        for name, data in OLD.items():
            (ws.out / name).write_bytes(data)
        return ws

    def freeze(self) -> None:
        """Record the state the case must not change (call after building its inputs)."""
        self.inputs_before = digests(self.inp)
        self.outputs_before = digests(self.out)

    def detect_args(self, *extra: object, t1: object = None, t2: object = None,
                    overwrite: bool = True) -> list[str]:
        """detect onto the old outputs, mask included, with the test model."""
        args = [t1 or self.inp / "t1.tif", t2 or self.inp / "t2.tif", "-o", self.out / "c.gpkg",
                "--mask", self.out / "m.tif", "--model", self.model, "--tile-size", "64",
                "--progress", "none", *(["--overwrite"] if overwrite else []), *extra]
        return [str(a) for a in args]

    def check(self, completed: bool, overwrite: bool = True) -> None:
        """The two guarantees, whatever the case did."""
        assert digests(self.inp) == self.inputs_before, "an input file changed"
        after = digests(self.out)
        if completed and overwrite:
            assert set(after) == set(self.outputs_before), after
            for name, old in OLD.items():
                assert (self.out / name).read_bytes() != old, f"{name} was not replaced"
        else:
            assert after == self.outputs_before, "the old outputs changed"


def invoke(args: list[str]) -> Outcome:
    """The CLI in this process, recording the warnings it let through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, args)
    return Outcome(result.exit_code, result.stdout, result.stderr,
                   [f"{w.category.__name__}: {w.message}" for w in caught])


def assert_sentence(outcome: Outcome, code: int, words: str) -> None:
    """Exit ``code`` and one ``Error:`` sentence on stderr holding ``words``."""
    message = outcome.stderr.strip()
    assert outcome.code == code, (outcome.code, outcome.stderr)
    assert message.startswith("Error: ") and words in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert message.endswith(".") and ". " not in message, message


def edited_checkpoint(source: Path, target: Path, edit) -> Path:
    """A copy of ``source`` whose metadata JSON went through ``edit`` (dict -> object)."""
    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["kdmsi"] = json.dumps(edit(json.loads(meta["kdmsi"])))
    save_file(tensors, str(target), metadata=meta)
    return target


def float_pair(folder: Path, nan_at: tuple[int, int] | None, nodata: float | None
               ) -> tuple[Path, Path]:
    """The test scene as float32 reflectances (0..1), one pixel of t2 NaN if asked."""
    t1, t2 = (a.astype(np.float32) / 255 for a in scene())
    if nan_at is not None:
        t2[:, nan_at[0], nan_at[1]] = np.nan
    return (write_tif(folder / "f1.tif", t1, nodata=nodata),
            write_tif(folder / "f2.tif", t2, nodata=nodata))


def probability_stats(path: Path) -> tuple[int, int]:
    """(valid pixels, NaN pixels) of a probability raster."""
    with rasterio.open(path) as ds:
        data = ds.read(1, masked=True)
    return int(data.count()), int(np.isnan(data.filled(0)).sum())
