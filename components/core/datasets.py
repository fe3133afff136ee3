"""MLflow dataset inputs: which data a stage's run read or wrote, by name, file, content and role.

A table with a ``split`` column is logged as one dataset per split, ``<name>.<split>``, because
MLflow keeps one context per dataset and run, and the splits have different roles (``CONTEXTS``).
The digest is ``frame_digest``, our own content hash of every cell, not MLflow's (which skips a
column holding any null and hashes the index): the pair dataset curate writes and the one validate
reads back from Parquet then carry the same digest, so the MLflow UI links the two runs.
Nothing is logged without an active run (a library call must not start one).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}
"""Split → MLflow input context (the ``mlflow.data.context`` tag)."""
WHOLE = "training"
"""Context of a table without a ``split`` column (a pair dataset is training data)."""


def _plain(value: Any) -> Any:
    """A cell as a JSON value: numpy scalars to Python, every kind of null to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def frame_digest(df: pd.DataFrame) -> str:
    """32 hex characters of sha256 over the column names and every row's cells (index ignored),
    so a frame and its Parquet round trip hash alike (MLflow stores at most 36 characters)."""
    h = hashlib.sha256(json.dumps([str(c) for c in df.columns]).encode())
    for row in df.itertuples(index=False, name=None):
        h.update(json.dumps([_plain(v) for v in row], ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def log_dataset(df: pd.DataFrame, source: str | Path, name: str, context: str,
                digest: str | None = None) -> bool:
    """Log ``df`` (read from or written to ``source``) as an input of the active run; False without one."""
    import mlflow

    if mlflow.active_run() is None:
        return False
    with warnings.catch_warnings():
        # a local path matches MLflow's two local artifact sources, which are the same class
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted",
                                category=UserWarning)
        # the schema MLflow records describes the data, never enforces it, so its int-column hint is noise
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(df, source=str(source), name=name, digest=digest or frame_digest(df))
        mlflow.log_input(dataset, context=context)  # the schema is inferred here
    return True


def log_splits(df: pd.DataFrame, source: str | Path, name: str) -> list[str]:
    """Log each split of ``df`` as ``<name>.<split>`` with its context (``CONTEXTS``), or the
    whole table as ``name`` when it has no ``split`` column. Returns the names logged."""
    if "split" not in df.columns:
        return [name] if log_dataset(df, source, name, WHOLE) else []
    logged = []
    for split, context in CONTEXTS.items():
        part = df[df["split"] == split].reset_index(drop=True)
        if len(part) and log_dataset(part, source, f"{name}.{split}", context):
            logged.append(f"{name}.{split}")
    return logged
