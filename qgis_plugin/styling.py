"""Styles for the two outputs, applied when Processing loads them into the project.

The colours follow the model and the data, not fixed numbers: a model's probabilities may
top out far below 1 (a first-stage model's threshold can be under 0.1), so a fixed 0.2..1 ramp
would hide most of what it finds. Both layers share one ramp, from the threshold the run
used to a high percentile of the probabilities above it; pixels below the threshold let
the imagery through, and polygons are filled by their ``mean_prob``, each with a legend.
"""

from __future__ import annotations

from dataclasses import dataclass

from qgis.core import (
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsGraduatedSymbolRenderer,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRasterTransparency,
    QgsRectangle,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

# The ramp ends at this percentile of the probabilities at or above the threshold.
TOP_PERCENTILE = 95.0
CLASSES = 5
_HISTOGRAM_BINS = 500
_SAMPLE_PIXELS = 1_000_000
# A ramp needs some width even when nothing (or one value) lies above the threshold.
_MIN_SPAN = 0.01
FILL_ALPHA = 150
OUTLINE_COLOUR = "#5a0010"


@dataclass(frozen=True)
class ProbabilityRange:
    """Where the colour ramp starts (the run's threshold) and ends."""

    low: float
    high: float

    def bounds(self) -> list[float]:
        """Class bounds: CLASSES equal steps from low to high."""
        step = (self.high - self.low) / CLASSES
        return [self.low + i * step for i in range(CLASSES + 1)]


def probability_range(path: str, threshold: float) -> ProbabilityRange:
    """The run's threshold and the TOP_PERCENTILE of the probabilities above it in ``path``."""
    layer = QgsRasterLayer(path, "probability", "gdal")
    high = threshold + _MIN_SPAN
    if layer.isValid():
        histogram = layer.dataProvider().histogram(
            1, _HISTOGRAM_BINS, threshold, 1.0, QgsRectangle(), _SAMPLE_PIXELS, False)
        counts = histogram.histogramVector
        total = sum(counts)
        if total:
            width = (1.0 - threshold) / _HISTOGRAM_BINS
            running = 0
            for index, count in enumerate(counts):
                running += count
                if running >= total * TOP_PERCENTILE / 100.0:
                    high = max(high, threshold + (index + 1) * width)
                    break
    return ProbabilityRange(threshold, min(max(high, threshold + _MIN_SPAN), 1.0))


def _ramp() -> QgsGradientColorRamp:
    return QgsGradientColorRamp(
        QColor("#ffe45c"), QColor("#c8001e"), False, [QgsGradientStop(0.5, QColor("#ff7a1a"))]
    )


def _label(low: float, high: float) -> str:
    return f"{low:.2f} – {high:.2f}"


def style_probability(layer: QgsRasterLayer, span: ProbabilityRange) -> None:
    """Ramp over the span (higher values take the last colour); below it, transparent."""
    function = QgsColorRampShader(span.low, span.high, _ramp(), QgsColorRampShader.Interpolated)
    function.setClip(False)
    function.classifyColorRamp(CLASSES + 1, -1)
    items = function.colorRampItemList()
    for item in items:
        item.label = f"{item.value:.2f}"
    items[0].label = f"{span.low:.2f} (threshold)"
    items[-1].label = f"≥ {span.high:.2f}"
    function.setColorRampItemList(items)
    shader = QgsRasterShader(span.low, span.high)
    shader.setRasterShaderFunction(function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(span.low)
    renderer.setClassificationMax(span.high)
    low = QgsRasterTransparency.TransparentSingleValuePixel()
    low.min, low.max, low.percentTransparent = 0.0, span.low, 100.0
    transparency = QgsRasterTransparency()
    transparency.setTransparentSingleValuePixelList([low])
    renderer.setRasterTransparency(transparency)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_changes(layer: QgsVectorLayer, span: ProbabilityRange) -> None:
    """Polygons filled by ``mean_prob`` in the probability ramp's classes, half opaque."""
    bounds = span.bounds()
    bounds[-1] = max(bounds[-1], 1.0)  # the last class takes everything above the ramp
    ramp = _ramp()
    ranges = []
    for i in range(CLASSES):
        colour = ramp.color(i / (CLASSES - 1))
        colour.setAlpha(FILL_ALPHA)
        symbol = QgsFillSymbol.createSimple({
            "color": colour.name(QColor.HexArgb), "outline_color": OUTLINE_COLOUR,
            "outline_width": "0.3", "outline_width_unit": "MM"})
        symbol.setColor(colour)
        label = _label(bounds[i], bounds[i + 1]) if i < CLASSES - 1 else f"≥ {bounds[i]:.2f}"
        ranges.append(QgsRendererRange(bounds[i], bounds[i + 1], symbol, label))
    renderer = QgsGraduatedSymbolRenderer("mean_prob", ranges)
    renderer.setSourceColorRamp(ramp)
    layer.setRenderer(renderer)
    layer.setLabelsEnabled(False)
    layer.triggerRepaint()


class OutputStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles a loaded output with the run's span and gives it a name after the inputs."""

    # Processing keeps only a C++ pointer to a post-processor; holding the Python objects
    # here stops them being garbage-collected before the layers are loaded.
    _alive: list[OutputStyler] = []

    def __init__(self, raster: bool, span: ProbabilityRange, name: str) -> None:
        super().__init__()
        self.raster = raster
        self.span = span
        self.name = name

    @classmethod
    def create(cls, raster: bool, span: ProbabilityRange, name: str) -> OutputStyler:
        styler = cls(raster, span, name)
        cls._alive = [*cls._alive[-7:], styler]
        return styler

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        layer.setName(self.name)
        if self.raster and isinstance(layer, QgsRasterLayer):
            style_probability(layer, self.span)
        elif not self.raster and isinstance(layer, QgsVectorLayer):
            style_changes(layer, self.span)
