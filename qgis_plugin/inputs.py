"""What the algorithms check and prepare from QGIS inputs before kdmsi-geo starts.

Cheap checks belong here, before the process starts: a run on the same image twice, or on
a web layer, would otherwise cost the user the time it takes to load PyTorch and the model.
Nothing here judges the images' content; that is the core's job.
"""

from __future__ import annotations

import math
import os
import re
from datetime import date

from qgis.core import (
    QgsCoordinateTransformContext,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsRasterLayer,
    QgsVectorFileWriter,
)
from qgis.PyQt.QtCore import QVariant

# Where GDAL drivers and common products keep the acquisition date (IMAGERY is GDAL's
# standard domain for it). File timestamps such as TIFFTAG_DATETIME say when the file was
# written, not when the image was taken, and are not used.
DATE_KEYS = (("IMAGERY", "ACQUISITIONDATETIME"), ("", "ACQUISITIONDATETIME"),
             ("", "ACQUISITION_DATE"), ("", "DATE_ACQUIRED"), ("", "SENSING_TIME"),
             ("", "PRODUCT_START_TIME"))
_DATE = re.compile(r"(\d{4})[-:/]?(\d{2})[-:/]?(\d{2})")
LABEL_FIELD = "changed"


def local_raster(layer: QgsRasterLayer | None, label: str) -> str:
    """The file behind a raster layer; kdmsi-geo reads files, not QGIS data providers.

    Layers served by other providers (WMS/XYZ, WCS, PostGIS rasters ...) are refused rather
    than exported, because an export needs an extent and a resolution only the user can
    choose.
    """
    if layer is None:
        raise QgsProcessingException(f"{label} is not a raster layer.")
    source = layer.source()
    if layer.providerType() != "gdal" or not os.path.isfile(source):
        raise QgsProcessingException(
            f"{label} ('{layer.name()}', a {layer.providerType()} layer) is not a local raster "
            "file: this algorithm needs local rasters such as GeoTIFF; save the layer to a "
            "file first (Export > Save As...) and use that file."
        )
    return source


def check_two_images(t1: str, t2: str) -> None:
    """Refuse the same file as both dates: the run would take minutes to find nothing."""
    if os.path.samefile(t1, t2):
        raise QgsProcessingException(
            f"T1 and T2 are the same image ({os.path.basename(t1)}); choose the image taken "
            "before as T1 and the one taken after as T2."
        )


def acquisition_date(path: str) -> date | None:
    """The acquisition date a raster's metadata states, or None when it states none."""
    from osgeo import gdal

    dataset = gdal.OpenEx(path, gdal.OF_RASTER)
    if dataset is None:
        return None
    for domain, key in DATE_KEYS:
        value = dataset.GetMetadataItem(key, domain) if domain else dataset.GetMetadataItem(key)
        match = _DATE.search(value or "")
        if match:
            try:
                return date(*(int(g) for g in match.groups()))
            except ValueError:
                continue
    return None


def date_order_warning(t1: str, t2: str) -> str | None:
    """A warning when the metadata says T1 was taken after T2 (the change would be reversed)."""
    first, second = acquisition_date(t1), acquisition_date(t2)
    if first is None or second is None or first <= second:
        return None
    return (f"T1 ({os.path.basename(t1)}) was acquired on {first.isoformat()}, after T2 "
            f"({os.path.basename(t2)}, {second.isoformat()}) according to their metadata: "
            "the images may be swapped.")


def band_subset(path: str, bands: list[int], folder: str, name: str) -> str:
    """A VRT of ``path`` holding only ``bands`` (1-based, in this order), for commands that
    read every band."""
    from osgeo import gdal

    target = os.path.join(folder, f"{name}.vrt")
    if gdal.Translate(target, path, format="VRT", bandList=bands) is None:
        raise QgsProcessingException(
            f"Bands {','.join(map(str, bands))} of {os.path.basename(path)} could not be "
            f"selected ({gdal.GetLastErrorMsg()}); check the band numbers.")
    return target


def labels_geopackage(source: QgsProcessingFeatureSource, field: str, target: str,
                      transforms: QgsCoordinateTransformContext) -> tuple[int, int]:
    """Copy label polygons into a GeoPackage with the integer field kdmsi-geo reads.

    The user's field may have any name and be boolean or integer; memory layers and
    selections work because Processing hands them over as a feature source. Returns the
    number of changed and unchanged areas.
    """
    fields = QgsFields()
    fields.append(QgsField(LABEL_FIELD, QVariant.Int))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "labels"
    writer = QgsVectorFileWriter.create(target, fields, source.wkbType(), source.sourceCrs(),
                                        transforms, options)
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"The label areas could not be written to {target} "
                                     f"({writer.errorMessage()}).")
    counts = {0: 0, 1: 0}
    try:
        for feature in source.getFeatures():
            value = _flag(feature.attribute(field), field, feature.id())
            if not feature.hasGeometry():
                continue
            feature.setFields(fields, True)
            feature.setAttribute(LABEL_FIELD, value)
            writer.addFeature(feature, QgsFeatureSink.FastInsert)
            counts[value] += 1
    finally:
        del writer
    if not counts[1] or not counts[0]:
        raise QgsProcessingException(
            f"The label areas hold {counts[1]} changed and {counts[0]} unchanged area(s); "
            f"draw both kinds, with '{field}' set to 1 where something changed and 0 where "
            "nothing did.")
    return counts[1], counts[0]


def _flag(value: object, field: str, fid: int) -> int:
    """1 or 0 from an integer, boolean or numeric text value; anything else is refused."""
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if number in (0.0, 1.0):
        return int(number)
    raise QgsProcessingException(
        f"Label area {fid} has {value!r} in the field '{field}'; set it to 1 where something "
        "changed and 0 where nothing did.")
