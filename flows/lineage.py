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


def pipeline_outputs(root: Path) -> set[str]:
    """Paths a pipeline run writes itself: ``dvc.lock`` and every out, metric and plot in dvc.yaml."""
    owned, path = {"dvc.lock"}, root / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}
    for body in stages.values():
        for kind in ("outs", "metrics", "plots"):
            owned |= {next(iter(o)) if isinstance(o, dict) else str(o) for o in body.get(kind) or []}
    return owned


def dirty_paths(root: Path) -> list[str]:
    """Tracked files that differ from HEAD, except the pipeline's own outputs.

    A run rewrites dvc.lock and its git-tracked metrics and reports; those are recorded by their
    dvc.lock hashes, so they do not make the code or params differ from the commit."""
    try:
        out = subprocess.run(["git", "diff", "--name-only", "-z", "HEAD", "--"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return []
    owned = pipeline_outputs(root)
    return sorted(p for p in out.split("\0") if p and p not in owned
                  and not any(p.startswith(o.rstrip("/") + "/") for o in owned))


def git_state(root: Path) -> dict[str, str]:
    """Lineage tags: ``git.sha`` (HEAD, always a revision) and ``git.dirty`` (changed inputs,
    comma-separated; empty when the code and params are those of the commit)."""
    return {"git.sha": head_commit(root), "git.dirty": ",".join(dirty_paths(root))}


def git_sha(root: Path) -> str:
    """HEAD for lineage, with ``-dirty`` when tracked inputs differ (not a revision: never pass it to git/DVC).

    The pipeline's own outputs do not count: a run that rewrote dvc.lock is still the commit's code."""
    sha = head_commit(root)
    return sha if sha == "unknown" or not dirty_paths(root) else sha + "-dirty"


def params(root: Path) -> dict[str, str]:
    path = root / "params.yaml"
    return flatten(yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def lock_hashes(root: Path) -> dict[str, str]:
    """``dvc.<stage>.<out path> -> md5`` for every output recorded in dvc.lock."""
    path = root / "dvc.lock"
    return _out_hashes(yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def lock_hashes_at(root: Path, rev: str) -> dict[str, str]:
    """``lock_hashes`` of the dvc.lock committed at ``rev`` ({} when that commit has none)."""
    shown = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=root, capture_output=True, text=True)
    return _out_hashes(yaml.safe_load(shown.stdout) or {}) if shown.returncode == 0 else {}


def uncached_outs(root: Path) -> set[str]:
    """``dvc.<stage>.<path>`` of the outputs dvc.yaml marks ``cache: false``: reports, metrics and
    plots, which also record timings (a guard's ms/token, a validation's load time) that differ
    between two runs of the same inputs. The cached outputs (traces, features, head, adapters,
    transcripts) are what makes two runs the same run."""
    path = root / "dvc.yaml"
    if not path.exists():
        return set()
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    out = set()
    for stage, body in stages.items():
        for entry in (body.get("outs") or []) + (body.get("metrics") or []) + (body.get("plots") or []):
            if isinstance(entry, dict):
                out |= {f"dvc.{stage}.{p}" for p, opts in entry.items() if (opts or {}).get("cache") is False}
    return out


def _out_hashes(lock: dict) -> dict[str, str]:
    out = {}
    for stage, body in (lock.get("stages") or {}).items():
        for o in body.get("outs") or []:
            out[f"dvc.{stage}.{o['path']}"] = o.get("md5", "")
    return out


def params_hash(root: Path) -> str:
    from components.data.records import stable_id

    path = root / "params.yaml"
    return stable_id(path.read_text()) if path.exists() else ""
