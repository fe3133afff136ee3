"""Foundations every layer uses: config loading, user errors, environment, atomic I/O, the stage CLI, MLflow tracking."""
