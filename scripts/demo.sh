#!/usr/bin/env bash
# The main job on the embedded default model: generate a georeferenced GeoTIFF pair
# (1024 x 1024 px at 0.5 m, UTM 33N) and detect its changes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
out=demo-output
mkdir -p "$out"
kdmsi-geo synth "$out/data" --seed 7 --scenes 1 --scene-size 1024 --tile-size 256 \
    --overwrite --progress none
scene="$out/data/scenes/scene_000"
kdmsi-geo detect "${scene}_t1.tif" "${scene}_t2.tif" -o "$out/changes.gpkg" \
    --probability "$out/probability.tif" --mask "$out/mask.tif" --overwrite
cat <<EOM

Outputs (in $(pwd)/$out):
  changes.gpkg      change polygons (layer 'changes': area_m2, mean_prob, max_prob)
  probability.tif   change probability, a Cloud Optimized GeoTIFF on t1's grid
  mask.tif          binary change mask
  data/scenes/      the input pair (scene_000_t1.tif, scene_000_t2.tif) and the true
                    change mask (scene_000_mask.tif) to compare with
Open them in QGIS:  qgis ${scene}_t1.tif ${scene}_t2.tif $out/probability.tif $out/changes.gpkg
EOM
