#!/usr/bin/env bash
# Idempotent set-up on Debian 12 as root: QGIS 3.22 from Debian, one virtual environment
# (.venv, system site packages so PyQGIS is visible) with the CPU torch build and the project.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in qgis python3-qgis qgis-providers python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.kdmsi-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    echo "Installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    # The CPU build first, so that the open range in setup.cfg installs nothing more.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    # numpy<2 for Debian's compiled GDAL/scipy; newer attrs/rasterio/pyproj than Debian's.
    .venv/bin/python -m pip install -q -e ".[dev,dask,torch,onnx]" "numpy<2" "attrs>=23.2" \
        "rasterio>=1.4" "pyproj>=3.7" "pytest-qgis==5.0.2"
    touch "$stamp"
fi
