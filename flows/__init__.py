"""Orchestration: Prefect flows and the ``craft`` CLI. Wires and orders stages; no stage logic."""
