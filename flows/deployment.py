"""The pipeline flow as deployed: ``craft-pipeline`` with a run timeout.

``prefect.yaml``'s entrypoint (``flows/deployment.py:scheduled_pipeline``) and ``craft schedule``
both run this flow. A process work pool has no timeout job variable, so the limit is a flow
option; when it passes, Prefect raises in the flow (stream() then stops the stage's process group)
and the run ends ``TimedOut``, which frees the deployment's concurrency slot for the next run.
"""
from __future__ import annotations

from flows.pipeline import pipeline

RUN_TIMEOUT_S = 4 * 3600
"""The whole default pipeline takes about 27 minutes on a 2-core CPU (README): a scheduled run still going
after 4 hours is stuck (a hung stage), not slow."""

scheduled_pipeline = pipeline.with_options(timeout_seconds=RUN_TIMEOUT_S)
