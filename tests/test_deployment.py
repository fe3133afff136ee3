"""prefect.yaml, deployed to a process work pool on a local Prefect server, runs on a worker (slow: ~2.5 min).

The deployment is the repository's own prefect.yaml (pull steps, schedule, concurrency limit,
entrypoint with a timeout), pointed at a test pool and at the ``sources`` and ``ingest`` stages of
a tiny workspace. The deployment clone starts one commit behind upstream and with a local edit,
as a previous scheduled run would leave it: the pull steps must reset and fast-forward it, so the
run's lineage names the upstream commit without ``-dirty``. Two runs are started at once: the
deployment's concurrency limit must queue the second until the first has finished.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from flows.schedule import start_local_server
from tests.conftest import ROOT, make_workspace

PREFECT = [sys.executable, "-m", "prefect"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _api(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def _upstream_and_clone(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A committed tiny workspace with the project's flows/ and prefect.yaml, and a deployment clone of it."""
    src = make_workspace(tmp_path / "upstream", yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu", "threads": 1},
        "ingest": {"sources": ["aplomb", "harmbench"], "max_harmful": 8, "max_benign": 4}}))
    shutil.copytree(ROOT / "flows", src / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "prefect.yaml", src / "prefect.yaml")
    (src / ".gitignore").write_text("mlruns/\n.prefect/\n__pycache__/\n.craft-run.lock\n")
    _git(src, "add", "-A")
    _git(src, "commit", "-q", "-m", "tiny workspace")
    clone = tmp_path / "deploy"
    _git(tmp_path, "clone", "-q", str(src), str(clone))
    _git(clone, "config", "craft.deploy", "true")
    (src / "NOTES.md").write_text("a commit the clone has not pulled yet\n")
    _git(src, "add", "NOTES.md")
    _git(src, "commit", "-q", "-m", "upstream moves on")
    with (clone / "params.yaml").open("a") as f:
        f.write("# left by a previous run\n")
    return src, clone


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_prefect_yaml_deploys_to_a_process_pool_and_a_worker_runs_it(tmp_path, tiny_model_dir, monkeypatch):
    src, clone = _upstream_and_clone(tmp_path, tiny_model_dir)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the server's database, this test's alone
    server, url = start_local_server()
    env = {**os.environ, "PREFECT_API_URL": url, "CRAFT_DEPLOY_DIR": str(clone), "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}  # dvc for the pull step
    worker_log = (tmp_path / "worker.log").open("w")
    worker = None
    try:
        subprocess.run(PREFECT + ["work-pool", "create", "test-pool", "--type", "process"], env=env, cwd=src,
                       check=True, capture_output=True)
        deployed = subprocess.run(PREFECT + ["--no-prompt", "deploy", "--name", "craft-weekly", "--pool", "test-pool",
                                             "--params", json.dumps({"stages": ["sources", "ingest"]})],
                                  env=env, cwd=src, capture_output=True, text=True)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        deployment = _api(url, "/deployments/name/craft-pipeline/craft-weekly")
        assert deployment["entrypoint"] == "flows/deployment.py:scheduled_pipeline"
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        schedule = deployment["schedules"][0]["schedule"]
        assert (schedule["cron"], schedule["timezone"]) == ("0 3 * * 0", "UTC")
        assert deployment["parameters"]["stages"] == ["sources", "ingest"]

        worker = subprocess.Popen(PREFECT + ["worker", "start", "--pool", "test-pool"], env=env, cwd=tmp_path,
                                  stdout=worker_log, stderr=subprocess.STDOUT)
        # Two runs at once: the concurrency limit must queue the second, not let it fail on the workspace lock.
        ids = [_api(url, f"/deployments/{deployment['id']}/create_flow_run", {})["id"] for _ in range(2)]
        deadline, runs = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            runs = [_api(url, f"/flow_runs/{i}") for i in ids]
            if all(r["state_type"] in TERMINAL for r in runs):
                break
            time.sleep(3)
        assert [r["state_type"] for r in runs] == ["COMPLETED"] * 2, (tmp_path / "worker.log").read_text()[-4000:]
        first, second = sorted(runs, key=lambda r: r["start_time"])
        assert second["start_time"] >= first["end_time"]  # one after the other
    finally:
        _stop(*[p for p in (worker, server) if p is not None])
        worker_log.close()

    assert (clone / "data" / "ingest" / "prompts.parquet").exists()
    assert (clone / "NOTES.md").exists()  # fast-forwarded to upstream
    assert "left by a previous run" not in (clone / "params.yaml").read_text()  # reset first
    head = _git(src, "rev-parse", "HEAD")
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("craft").experiment_id],
                              filter_string=f"tags.`git.sha` LIKE '{head}%'")
    assert [r.data.tags["git.sha"] for r in runs if r.info.run_name == "pipeline"] == [head, head]
