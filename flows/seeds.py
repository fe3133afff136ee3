"""The ``craft-seeds`` Prefect flow: the pipeline under other training seeds, and the spread.

Each seed is one DVC experiment, ``dvc exp run --temp --name seed-<s> -S curate.seed=<s> …``: the
whole pipeline in a temporary copy of the committed workspace, one seed at a time (DVC's run
cache restores the unchanged ``ingest``). The stages log into this workspace's MLflow store as
children of one parent run ``seeds``. The experiments stay in the repository afterwards:
``dvc exp show`` lists them, ``dvc exp apply seed-1`` brings one's outputs into the workspace.
The committed run (the seeds in ``params.yaml``) is the column ``HEAD``. Written: ``seeds/spread.md``,
``seeds/spread.json``, and the table as a Prefect artifact.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import env, seed_spread, tracking
from components.io import write_text
from flows.pipeline import StageFailed, stage_env, workspace_lock

OUT = "seeds"


def _dvc(root: Path, *args: str, env_vars: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env_vars or stage_env(None),
                          capture_output=True, text=True, errors="replace")


@task(name="seed-experiment", task_run_name="seed-{seed}", cache_policy=NO_CACHE)
def run_seed(seed: int, workspace: str, parent_run_id: str) -> None:
    """One full pipeline run with every training seed set to ``seed`` (a DVC experiment)."""
    logger = get_run_logger()
    name = f"seed-{seed}"
    _dvc(Path(workspace), "exp", "remove", name)  # a rerun replaces the old experiment of that name
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name]
    for assignment in seed_spread.overrides(seed):
        cmd += ["-S", assignment]
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=workspace, env=stage_env(parent_run_id), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip().split("\r")[-1]
            if line:
                logger.info("[%s] %s", name, line)
                tail = (tail + [line])[-40:]
    if proc.returncode != 0:
        raise StageFailed(f"experiment {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def experiment_metrics(root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{run name: {stage: metrics}} for HEAD and the ``seed-*`` experiments, from ``dvc exp show``."""
    shown = _dvc(root, "exp", "show", "--json")
    if shown.returncode != 0:
        raise RuntimeError(f"dvc exp show failed:\n{shown.stderr[-2000:]}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for commit in json.loads(shown.stdout):
        runs = [(commit.get("rev"), commit)] + [(e.get("name"), e["revs"][0]) for e in commit.get("experiments") or []
                                                 if e.get("revs")]
        for name, rev in runs:
            if name == "workspace" or not (name == commit.get("rev") or str(name).startswith("seed-")):
                continue
            metrics = (rev.get("data") or {}).get("metrics") or {}
            out["HEAD" if name == commit.get("rev") else name] = {
                Path(path).parent.name: (m.get("data") or {}) for path, m in metrics.items()}
    return out


@flow(name="craft-seeds", log_prints=True)
def seed_sweep(seeds: list[int], workspace: str = ".") -> list[dict]:
    """Run the pipeline once per seed (DVC experiments) and write the spread of the headline figures."""
    cfg = seed_spread.SweepConfig(tuple(seeds))
    root = env.configure(workspace)
    tracking.ensure_store()
    with workspace_lock(root), mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="seeds",
                                                tags={"craft.stage": "seeds"}) as run:
        mlflow.log_param("seeds", ",".join(map(str, cfg.seeds)))
        for seed in cfg.seeds:
            run_seed(seed, str(root), run.info.run_id)
        found = experiment_metrics(root)
        names = ["HEAD"] + [f"seed-{s}" for s in cfg.seeds if f"seed-{s}" in found]
        runs = {n: seed_spread.headline(found[n]) for n in names if n in found}
        rows = seed_spread.spread(runs)
        table = seed_spread.markdown(rows, list(runs))
        write_text(root / OUT / "spread.md", f"# Seed spread ({len(runs)} runs)\n\n{table}\n")
        write_text(root / OUT / "spread.json", json.dumps(rows, indent=2))
        mlflow.log_artifacts(str(root / OUT), OUT)
        create_markdown_artifact(key="seed-spread", markdown=table, description=f"MLflow run {run.info.run_id}")
    return rows
