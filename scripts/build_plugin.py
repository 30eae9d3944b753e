"""Build the installable QGIS plugin: dist/kdmsi_geo-<version>.zip.

Usage: python scripts/build_plugin.py [--out DIR]

The zip holds one folder, kdmsi_geo/, with the plugin's Python modules, icon and graphical
models (.model3) from qgis_plugin/, plus metadata.txt and LICENSE from the repository root;
nothing else (no tests, caches or network weights: the plugin runs kdmsi-geo, which brings
its own model).
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "qgis_plugin"
FOLDER = "kdmsi_geo"
SHIPPED_SUFFIXES = {".py", ".svg", ".model3"}


def plugin_version(metadata: Path = ROOT / "metadata.txt") -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(metadata, encoding="utf-8")
    return parser["general"]["version"]


def plugin_files() -> list[tuple[Path, str]]:
    """(file on disk, name in the zip) for everything the installed plugin needs."""
    files = [(ROOT / name, f"{FOLDER}/{name}") for name in ("metadata.txt", "LICENSE")]
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file() and path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in path.parts:
            files.append((path, f"{FOLDER}/{path.relative_to(SOURCE).as_posix()}"))
    return files


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{FOLDER}-{plugin_version()}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in plugin_files():
            archive.write(path, name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (dist/)")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
