"""MLflow model registry: registering, gated promotion, the pyfunc served model."""
