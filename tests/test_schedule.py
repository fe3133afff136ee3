"""`craft schedule`: its options checked up front, and a served cron deployment that fires a run (slow: ~2 min)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from components.core.errors import UserError
from flows.cli import build_parser, main
from flows.schedule import ScheduleConfig, start_local_server
from tests.conftest import make_workspace


def test_schedule_reads_the_cron_in_its_time_zone_and_limits_runs():
    cfg = ScheduleConfig(cron="0 3 * * 0", timezone="Europe/Berlin")
    schedule = cfg.cron_schedule()
    assert (schedule.cron, schedule.timezone) == ("0 3 * * 0", "Europe/Berlin")
    assert ScheduleConfig(cron="0 3 * * 0").cron_schedule().timezone == "UTC"  # not this machine's zone
    assert (cfg.concurrency().limit, cfg.concurrency().collision_strategy.value) == (1, "ENQUEUE")
    skip = ScheduleConfig(cron="0 3 * * 0", limit=2, overlap="skip").concurrency()
    assert (skip.limit, skip.collision_strategy.value) == (2, "CANCEL_NEW")


@pytest.mark.parametrize("kwargs, names", [
    ({"timezone": "Mars/Olympus_Mons"}, "--timezone"), ({"timezone": "../etc/passwd"}, "--timezone"),
    ({"cron": "0 3 * *"}, "--cron"), ({"cron": "H 3 * * 0"}, "--cron"),
    ({"limit": 0}, "--limit"), ({"overlap": "drop"}, "--overlap")])
def test_bad_schedule_options_are_user_errors(kwargs, names):
    with pytest.raises(UserError, match=names):
        ScheduleConfig(**{"cron": "0 3 * * 0", **kwargs})


def test_bad_time_zone_is_one_line_and_exit_2_before_any_server(capsys):
    assert main(["schedule", "--cron", "0 3 * * 0", "--timezone", "Berlin"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("craft schedule: error: --timezone 'Berlin' is not an IANA time zone") and "\n" not in err


def test_help_says_which_time_zone_the_cron_is_read_in():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["schedule"]
    text = " ".join(sub.format_help().split())
    assert "read in --timezone (default UTC)" in text and "not this machine's zone" in text


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
                              "--timezone", "Europe/Berlin", "--workspace", str(ws), "--stages", "ingest",
                              "--name", "test-cron"],
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
        with urllib.request.urlopen(f"{url}/deployments/name/craft-pipeline/test-cron", timeout=10) as r:
            deployment = json.loads(r.read())
        assert deployment["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    finally:
        for proc in (serve, server):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
