"""The built plugin zip: its contents, its metadata, and a real install used by qgis_process."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from qgis.core import (
    QgsCoordinateTransformContext,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from tests.qgis.recording import drawn_layer

FOLDER = "kdmsi_geo"
METADATA_KEYS = {"name", "qgisMinimumVersion", "description", "about", "version", "author",
                 "email", "repository", "tracker", "homepage", "tags", "category", "icon",
                 "hasProcessingProvider", "changelog"}


def test_zip_holds_only_the_plugin_in_one_folder(plugin_zip: Path) -> None:
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert plugin_zip.name.startswith(f"{FOLDER}-")
    assert {name.split("/")[0] for name in names} == {FOLDER}
    assert {f"{FOLDER}/metadata.txt", f"{FOLDER}/LICENSE", f"{FOLDER}/__init__.py",
            f"{FOLDER}/icon.svg"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".safetensors"))
                or "test" in n or n.endswith(".md")]


def test_metadata_is_complete(plugin_zip: Path) -> None:
    text = zipfile.ZipFile(plugin_zip).read(f"{FOLDER}/metadata.txt").decode()
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # QGIS's keys are case-sensitive
    parser.read_string(text)
    general = parser["general"]
    assert set(general) >= METADATA_KEYS
    assert all(general[key].strip() for key in METADATA_KEYS)
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert plugin_zip.name == f"{FOLDER}-{general['version']}.zip"
    assert f"{FOLDER}/{general['icon']}" in zipfile.ZipFile(plugin_zip).namelist()


@pytest.fixture
def qgis_process_env(tmp_path: Path, core_executable: str) -> dict[str, str]:
    """A throwaway QGIS profile, headless, free of the settings pytest-qgis set up."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items()
           if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), XDG_RUNTIME_DIR=str(runtime),
               QT_QPA_PLATFORM="offscreen", KDMSI_GEO_EXECUTABLE=core_executable)
    return env


@pytest.fixture
def qgis_process(plugin_zip: Path, qgis_process_env: dict[str, str]
                 ) -> Callable[..., subprocess.CompletedProcess]:
    """``qgis_process.bin`` with the zip installed and enabled in a throwaway profile."""
    executable = shutil.which("qgis_process.bin")
    assert executable, "qgis_process.bin not found: install Debian's qgis package"
    plugins = Path(qgis_process_env["XDG_DATA_HOME"], "QGIS/QGIS3/profiles/default/python/plugins")
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([executable, *args], env=qgis_process_env, capture_output=True,
                              text=True, timeout=300, check=False)

    assert run("plugins", "enable", FOLDER).returncode == 0
    return run


def test_installed_zip_runs_from_qgis_process(qgis_process, pair: dict[str, str],
                                              random_model: str, tmp_path: Path) -> None:
    # qgis_process runs Debian's Python, which has no torch: the plugin loads without it.
    listing = qgis_process("list")
    for alg_id in ("kdmsi:detectchanges", "kdmsi:trainmodel", "kdmsi:modelinfo",
                   "kdmsi:Train a model and detect changes"):
        assert alg_id in listing.stdout, listing.stdout + listing.stderr

    probability, changes = tmp_path / "probability.tif", tmp_path / "changes.gpkg"
    done = qgis_process("run", "kdmsi:detectchanges", "--json", "--", f"T1={pair['t1']}",
                        f"T2={pair['t2']}", f"MODEL={random_model}", "TILE_SIZE=128",
                        "SCALES=1", "DEVICE=cpu", "BANDS=1", "BANDS=2", "BANDS=3",
                        f"PROBABILITY={probability}", f"CHANGES={changes}")
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)["results"]
    assert results["PROBABILITY"] == str(probability)
    assert results["CHANGES"] == str(changes)
    assert QgsRasterLayer(str(probability), "p").isValid()
    assert QgsVectorLayer(str(changes), "c", "ogr").isValid()


def test_qgis_process_trains_from_a_drawn_layer_then_detects_with_the_model(
        qgis_process, pair: dict[str, str], tmp_path: Path) -> None:
    """The shipped graphical model: kdmsi:trainmodel, then kdmsi:detectchanges with its model."""
    # Areas drawn in QGIS and saved as a GeoPackage, the flag in a field of the user's naming.
    drawn = drawn_layer(pair, field="moved")
    labels = tmp_path / "areas.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error = QgsVectorFileWriter.writeAsVectorFormatV3(
        drawn, str(labels), QgsCoordinateTransformContext(), options)
    assert error[0] == QgsVectorFileWriter.NoError, error

    model, changes = tmp_path / "drawn.safetensors", tmp_path / "changes.gpkg"
    done = qgis_process("run", "kdmsi:Train a model and detect changes", "--json", "--",
                        f"T1={pair['t1']}", f"T2={pair['t2']}", f"LABELS={labels}",
                        "CHANGED_FIELD=moved", "EPOCHS=1", "TILE_SIZE=64", "SAMPLES=48",
                        f"train:MODEL={model}", f"detect:PROBABILITY={tmp_path / 'p.tif'}",
                        f"detect:CHANGES={changes}")
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)["results"]
    assert results["train:MODEL"] == str(model) and model.is_file()
    # Detection ran with the model training had just written.
    assert f"--model {model}" in json.dumps(json.loads(done.stdout)["log"])
    assert QgsRasterLayer(results["detect:PROBABILITY"], "p").isValid()
    assert QgsVectorLayer(str(changes), "c", "ogr").isValid()
