"""Synthetic change-detection data: aerial-looking scene pairs, masks, GeoTIFFs, tile sets.

The scenes exist to train and test the pipeline without downloading a data set; they are
varied on purpose (land cover, buildings, seasons, sun, sensor) so that nothing but the
labelled changes separates a changed pair from an unchanged one.
"""

from kdmsi_train.synth.scene import ScenePair, make_scene_pair
from kdmsi_train.synth.writers import write_scene_pair, write_tile_dataset

__all__ = ["ScenePair", "make_scene_pair", "write_scene_pair", "write_tile_dataset"]
