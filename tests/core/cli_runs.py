"""The command line in a subprocess: as installed, or as where torch is not installed (the
``kdmsi-geo[onnx]`` install). The torch-less run prints, as its last stderr line, the JSON
list of the torch modules it loaded, which should be empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KDMSI = Path(sys.executable).with_name("kdmsi-geo")
NO_TORCH = """import json, sys
sys.modules["torch"] = None  # every import of torch now fails, as where it is not installed
from kdmsi_core.cli.main import cli
try:
    cli(sys.argv[1:])
finally:
    loaded = sorted(m for m, v in sys.modules.items() if m.startswith("torch") and v)
    print(json.dumps(loaded), file=sys.stderr)
"""


def cli_env() -> dict[str, str]:
    """This environment without PROJ paths, so that PROJ uses the wheels' data."""
    return {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(KDMSI), *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), check=False)


def run_without_torch(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), check=False)
