"""Process environment the pipeline needs: offline hubs, no telemetry, project-local homes.

Called explicitly by every entry point (CLI, stage ``main()``); nothing happens at import.
Values already set by the user win, so a user can opt back into the hub or point at a server.
"""
from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "GX_ANALYTICS_ENABLED": "false",
}


def configure(workspace: str | Path = ".") -> Path:
    """Set offline / no-telemetry defaults and project-local Prefect and MLflow locations.

    Returns the absolute workspace path. Existing environment values are kept.
    """
    root = Path(workspace).resolve()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    os.environ.setdefault("CRAFT_WORKSPACE", str(root))
    return root
