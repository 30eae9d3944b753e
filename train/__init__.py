"""Training, data sets, evaluation and the default-model recipe (installed as ``kdmsi_train``)."""
