"""A cron deployment served on a local Prefect server fires a pipeline run (slow: ~2 minutes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from flows.schedule import start_local_server
from tests.conftest import make_workspace


def _runs(url: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_cron_deployment_fires(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path / "ws", yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu"},
        "ingest": {"sources": ["aplomb", "harmbench"], "max_harmful": 8, "max_benign": 4}}))
    server, url = start_local_server()
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect")}
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--cron", "* * * * *",
                              "--workspace", str(ws), "--stages", "ingest", "--name", "test-cron"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline, states = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            states = [r["state_type"] for r in _runs(url) if r.get("deployment_id")]
            if "COMPLETED" in states:
                break
            time.sleep(5)
        assert "COMPLETED" in states, states
        assert (ws / "data" / "ingest" / "prompts.parquet").exists()
    finally:
        for proc in (serve, server):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
