"""SIGKILL at several points of every stage, and of `craft run` itself: nothing partial remains,
tracked outputs survive, no MLflow run stays RUNNING, and the rerun is clean (slow: minutes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_workspace
from tests.test_flow import _params

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
KILL_AT = (0.3, 0.7)
"""Kill points, as fractions of the stage's own uninterrupted (forced) run time."""


def _env(ws: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(ws),
            "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}", "PREFECT_HOME": str(ws / ".prefect")}


def _repro(ws: Path, stage: str, force: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    return subprocess.Popen(cmd, cwd=ws, env=_env(ws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _tracked_outputs(ws: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"][stage]
    return [ws / path for kind in ("outs", "metrics", "plots") for entry in spec.get(kind, [])
            if isinstance(entry, dict) for path, opts in entry.items() if opts.get("cache") is False]


def _assert_nothing_partial(ws: Path, stage: str) -> None:
    debris = [p for p in (ws / "data" / stage).rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not debris, debris
    for path in _tracked_outputs(ws, stage):
        assert path.exists(), f"{path} was lost"
        if path.suffix == ".json":
            json.loads(path.read_text())  # whole, not torn
    yaml.safe_load((ws / "dvc.lock").read_text())


def _running_runs(ws: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments) if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("kill") / "ws", _params(tiny_model_dir))
    assert subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=_env(ws),
                          capture_output=True).returncode == 0
    return ws


STAGES = ["ingest", "curate", "validate", "extract", "train_head", "train_sft", "train_rl", "train_judge", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_several_points_of_a_stage_then_rerun(workspace, stage):
    started = time.monotonic()
    assert _repro(workspace, stage).wait(600) == 0
    duration = time.monotonic() - started
    for fraction in KILL_AT:
        proc = _repro(workspace, stage)
        time.sleep(duration * fraction)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _assert_nothing_partial(workspace, stage)
    assert _repro(workspace, stage, force=False).wait(600) == 0  # the rerun completes the stage (or skips it)
    _assert_nothing_partial(workspace, stage)
    assert _repro(workspace, stage).wait(600) == 0  # a run that starts marks the killed ones KILLED
    status = subprocess.run([sys.executable, "-m", "dvc", "status", stage, "--json"], cwd=workspace,
                            env=_env(workspace), capture_output=True, text=True)
    assert stage not in json.loads(status.stdout or "{}"), status.stdout
    assert not _running_runs(workspace)  # the killed runs were marked KILLED when the rerun started


def _craft_run(ws: Path, *stages: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--workspace", str(ws), "--no-register",
                             "--force", "--stages", ",".join(stages)], cwd=ws, env=_env(ws),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processes_of(ws: Path) -> list[str]:
    """Command lines of live processes working in ``ws`` (stages, dvc, a Prefect server)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "cwd") == str(ws) and (proc / "stat").read_text().split(") ")[1][0] != "Z":
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_killed_craft_run_leaves_nothing_running_and_the_rerun_is_clean(workspace):
    stages = ("ingest", "curate")
    proc = _craft_run(workspace, *stages)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any("components.curate" in c for c in _processes_of(workspace)):
        time.sleep(0.5)
    time.sleep(2)
    proc.kill()  # SIGKILL: craft cannot pass it on; the stage notices and stops itself
    proc.wait()
    deadline = time.monotonic() + 60  # the stage stops itself, then dvc reports its failure and exits
    while time.monotonic() < deadline and any("components." in c or " dvc " in c for c in _processes_of(workspace)):
        time.sleep(0.5)
    assert not [c for c in _processes_of(workspace) if "components." in c or " dvc " in c]
    _assert_nothing_partial(workspace, "curate")

    rerun = _craft_run(workspace, *stages)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    assert not _running_runs(workspace)
    assert not [c for c in _processes_of(workspace) if "prefect.server" in c]  # the orphaned server was stopped


def test_sigterm_to_craft_run_stops_the_stage_and_exits_130(workspace):
    proc = _craft_run(workspace, "ingest", "curate")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any("components.curate" in c for c in _processes_of(workspace)):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)  # a scheduler's timeout, systemd stop, kill
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "craft run: interrupted" in err, err[-3000:]
    assert not [c for c in _processes_of(workspace) if "components." in c or " dvc " in c]
    assert not _running_runs(workspace)  # the stage's and the pipeline's runs ended KILLED
    _assert_nothing_partial(workspace, "curate")
