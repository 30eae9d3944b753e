"""Styles for the two outputs, applied when Processing loads them into the project.

A probability map over imagery is only readable when unlikely pixels let the imagery
through, and change polygons over that map only when they are outlines, not fills.
"""

from __future__ import annotations

from qgis.core import (
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRasterTransparency,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

# Probabilities below this are fully transparent.
TRANSPARENT_BELOW = 0.2
OUTLINE_COLOUR = "#00e5ff"


def style_probability(layer: QgsRasterLayer) -> None:
    """Yellow-to-red ramp over [TRANSPARENT_BELOW, 1]; lower probabilities transparent."""
    ramp = QgsGradientColorRamp(
        QColor("#ffe45c"), QColor("#c8001e"), False, [QgsGradientStop(0.5, QColor("#ff7a1a"))]
    )
    function = QgsColorRampShader(TRANSPARENT_BELOW, 1.0, ramp, QgsColorRampShader.Interpolated)
    function.classifyColorRamp(5, -1)
    shader = QgsRasterShader(TRANSPARENT_BELOW, 1.0)
    shader.setRasterShaderFunction(function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(TRANSPARENT_BELOW)
    renderer.setClassificationMax(1.0)
    low = QgsRasterTransparency.TransparentSingleValuePixel()
    low.min, low.max, low.percentTransparent = 0.0, TRANSPARENT_BELOW, 100.0
    transparency = QgsRasterTransparency()
    transparency.setTransparentSingleValuePixelList([low])
    renderer.setRasterTransparency(transparency)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_changes(layer: QgsVectorLayer) -> None:
    """Hollow polygons with a bright outline, no labels."""
    symbol = QgsFillSymbol.createSimple({
        "style": "no",
        "outline_color": OUTLINE_COLOUR,
        "outline_width": "0.6",
        "outline_width_unit": "MM",
    })
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    layer.setLabelsEnabled(False)
    layer.triggerRepaint()


class OutputStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies :func:`style_probability` or :func:`style_changes` to a loaded output."""

    # Processing keeps only a C++ pointer to a post-processor; holding the Python objects
    # here stops them being garbage-collected before the layers are loaded.
    _alive: list[OutputStyler] = []

    def __init__(self, raster: bool) -> None:
        super().__init__()
        self.raster = raster

    @classmethod
    def create(cls, raster: bool) -> OutputStyler:
        styler = cls(raster)
        cls._alive = [*cls._alive[-7:], styler]
        return styler

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        if self.raster and isinstance(layer, QgsRasterLayer):
            style_probability(layer)
        elif not self.raster and isinstance(layer, QgsVectorLayer):
            style_changes(layer)
