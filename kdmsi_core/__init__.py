"""kdmsi-geo core: everything inference needs (never imports qgis)."""

__version__ = "0.1.0"
