"""KD-MSI change detection for QGIS: a Processing provider and dialog that run kdmsi-geo."""


def classFactory(iface):
    """QGIS's entry point; ``iface`` is None under qgis_process."""
    from .plugin import KdmsiPlugin

    return KdmsiPlugin(iface)
