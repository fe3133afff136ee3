"""Killed processes leave no debris: MLflow runs end KILLED, orphaned stages stop, tracked outputs
survive, and a rerun is clean."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from components.core import lifecycle, tracking

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def _dead_token() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{proc.pid}:1"  # a PID that is gone (or, reused, started at another time)


def test_process_tokens_tell_the_living_from_the_dead_and_from_a_reused_pid():
    me = lifecycle.process_token()
    assert lifecycle.token_alive(me)
    assert not lifecycle.token_alive(_dead_token())
    pid, _, started = me.partition(":")
    if started:  # same PID, another start time: a reused PID is not our process
        assert not lifecycle.token_alive(f"{pid}:{int(started) + 1}")


def test_runs_left_running_by_a_dead_process_are_marked_killed_at_the_next_start():
    import mlflow

    experiment = tracking.experiment_id()
    dead = mlflow.MlflowClient().create_run(experiment, tags={**tracking.owner_tags(), "craft.process": _dead_token()})
    alive = mlflow.MlflowClient().create_run(experiment, tags=tracking.owner_tags())
    foreign = mlflow.MlflowClient().create_run(experiment, tags={"craft.host": "elsewhere", "craft.process": _dead_token()})
    ended = tracking.end_stale_runs()
    status = lambda run: mlflow.get_run(run.info.run_id).info.status  # noqa: E731
    assert dead.info.run_id in ended and status(dead) == "KILLED"
    assert status(alive) == "RUNNING" and status(foreign) == "RUNNING"  # may be alive: left alone
    for run in (alive, foreign):
        mlflow.MlflowClient().set_terminated(run.info.run_id)


STAGE_LIKE = textwrap.dedent("""
    import os, sys, time
    from components.core import lifecycle, tracking
    lifecycle.stop_on_sigterm()
    lifecycle.watch_supervisor(interval=0.2)
    with tracking.stage_run("probe") as run:
        print(run.info.run_id, flush=True)
        with open(sys.argv[1], "w") as fh:
            fh.write("partial")
        time.sleep(120)
""")


def _start_stage_like(tmp_path: Path, **env) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", STAGE_LIKE, str(tmp_path / "scratch")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    return proc, run_id


def test_sigterm_ends_the_stage_run_as_killed(tmp_path):
    import mlflow

    proc, run_id = _start_stage_like(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) != 0
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["craft.ended_by"] == "Interrupted"


def test_an_orphaned_stage_stops_when_craft_run_is_killed(tmp_path):
    """SIGKILL cannot be passed on to children: the stage watches its supervisor and stops itself."""
    import mlflow

    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        proc, run_id = _start_stage_like(tmp_path, **{lifecycle.SUPERVISOR_ENV: lifecycle.process_token(supervisor.pid)})
        time.sleep(0.5)
        assert proc.poll() is None  # the supervisor lives: the stage works on
        supervisor.kill()
        assert proc.wait(30) != 0
    finally:
        supervisor.kill()
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_every_git_tracked_output_survives_a_killed_stage():
    """DVC deletes a stage's outputs before running it; one kept in git (``cache: false``) has no
    cache to come back from, so each must be ``persist: true`` (written atomically by the stage)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lost = []
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    (path, opts), = entry.items()
                    if opts.get("cache") is False and opts.get("persist") is not True:
                        lost.append(f"{name}: {path}")
    assert not lost, lost


@pytest.mark.parametrize("persist", [True, False])
def test_dvc_keeps_a_persisted_tracked_output_of_a_killed_stage(tmp_path, persist):
    """What ``persist`` buys, shown on DVC itself: the killed stage's tracked file is kept (or lost)."""
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(dvc + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "metrics.json").write_text('{"good": 1}')
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {
        "cmd": "python -c \"import time; open('started', 'w').close(); time.sleep(60)\"",
        "metrics": [{"metrics.json": {"cache": False, "persist": persist}}]}}}))
    proc = subprocess.Popen(dvc + ["repro", "-q"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "started").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = (tmp_path / "metrics.json").exists()
    assert kept == persist
    if persist:
        assert json.loads((tmp_path / "metrics.json").read_text()) == {"good": 1}

