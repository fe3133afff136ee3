"""Lineage recorded on the pipeline's parent MLflow run: git sha, params, dvc.lock hashes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from components.core.tracking import flatten


def head_commit(root: Path) -> str:
    """The plain ``git rev-parse HEAD`` (a revision git and DVC accept); "unknown" outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def git_sha(root: Path) -> str:
    """HEAD for lineage, with ``-dirty`` when tracked files differ (not a revision: never pass it to git/DVC)."""
    sha = head_commit(root)
    if sha == "unknown":
        return sha
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return sha
    return sha + ("-dirty" if dirty else "")


def params(root: Path) -> dict[str, str]:
    path = root / "params.yaml"
    return flatten(yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def lock_hashes(root: Path) -> dict[str, str]:
    """``dvc.<stage>.<out path> -> md5`` for every output recorded in dvc.lock."""
    path = root / "dvc.lock"
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    out = {}
    for stage, body in (lock.get("stages") or {}).items():
        for o in body.get("outs") or []:
            out[f"dvc.{stage}.{o['path']}"] = o.get("md5", "")
    return out


def params_hash(root: Path) -> str:
    from components.data.records import stable_id

    path = root / "params.yaml"
    return stable_id(path.read_text()) if path.exists() else ""
