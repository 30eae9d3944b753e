"""Fixtures for the plugin tests in a real QGIS (pytest-qgis): the plugin as users install it.

The plugin is imported from the zip that ``scripts/build_plugin.py`` builds, not from the
source folder, and it runs the real ``kdmsi-geo`` of this environment (or the one named by
``KDMSI_GEO_EXECUTABLE``). Test inputs are made by ``data.py`` in a subprocess.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_SCRIPT = Path(__file__).with_name("data.py")


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_plugin", ROOT / "scripts/build_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _core_env() -> dict[str, str]:
    """This environment minus Debian's PROJ paths, which break the rasterio wheel."""
    return {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}


def make_data(*args: str) -> dict[str, str]:
    """Run ``data.py`` with the core's Python and return the paths it prints."""
    done = subprocess.run([sys.executable, str(DATA_SCRIPT), *args], env=_core_env(),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def core_executable() -> str:
    """The kdmsi-geo under test: $KDMSI_GEO_EXECUTABLE, else the one beside this Python."""
    configured = os.environ.get("KDMSI_GEO_EXECUTABLE")
    found = shutil.which(configured or "kdmsi-geo", path=None if configured else
                         str(Path(sys.executable).parent))
    assert found, "kdmsi-geo is not installed in this environment (pip install -e .)"
    return found


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_script().build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def plugin_module(plugin_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """``kdmsi_geo`` imported from the built zip, unpacked as QGIS would."""
    plugins = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    sys.path.insert(0, str(plugins))
    import kdmsi_geo

    assert Path(kdmsi_geo.__file__).parent == plugins / "kdmsi_geo"
    return kdmsi_geo


@pytest.fixture(scope="session")
def plugin(qgis_iface, qgis_processing, plugin_module: ModuleType) -> Iterator[object]:
    """The plugin after QGIS's ``classFactory`` and ``initGui``; after its ``unload``, the
    Python wrappers of QGIS objects that the tests left in reference cycles are collected
    while QGIS still runs (collected after ``exitQgis`` they crash the interpreter)."""
    instance = plugin_module.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()
    gc.collect()


@pytest.fixture(autouse=True)
def _executable_from_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the plugin at the core through the environment, with no stale Processing option."""
    if "plugin" not in request.fixturenames:
        return
    from processing.core.ProcessingConfig import ProcessingConfig

    monkeypatch.setenv("KDMSI_GEO_EXECUTABLE", request.getfixturevalue("core_executable"))
    ProcessingConfig.setSettingValue("KDMSI_GEO_EXECUTABLE", "")


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small synthetic pair with one changed region (t1, t2, mask)."""
    return make_data("pair", str(tmp_path_factory.mktemp("pair")), "--size", "384")


@pytest.fixture(scope="session")
def large_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A pair big enough that a run lasts several seconds, to cancel it mid-way."""
    return make_data("pair", str(tmp_path_factory.mktemp("large")), "--size", "1024")


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint with untrained weights, for tests of plumbing rather than detection."""
    return make_data("model", str(tmp_path_factory.mktemp("model") / "random.safetensors"))["model"]
