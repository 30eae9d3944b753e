"""The ``kdmsi-geo`` command line: a thin click layer over library functions."""
