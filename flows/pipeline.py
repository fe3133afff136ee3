"""The ``craft-pipeline`` Prefect flow: DVC stages in order, one MLflow parent run.

Each stage runs as ``dvc repro --single-item <stage>`` (two ``dvc repro`` in one repo fail on a
lock, so stages run one at a time); DVC decides what to skip, so Prefect task caching is off.
The stage process opens its own MLflow child run under the parent whose id it receives in
``CRAFT_PARENT_RUN_ID``. A failing stage stops the flow: no later stage runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components.core import env, lifecycle, tracking
from components.core.errors import UserError
from flows import lineage
from flows.stages import Stage, select

SKIPPED = "didn't change, skipping"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries its report or output tail.

    ``transient`` is false when the stage itself said the input is wrong (exit 1: failed checks,
    exit 2: user error): retrying cannot help, so the task is not retried. ``exit_code`` is the
    stage command's own exit status, which ``craft run`` passes on (2: a user error).
    """

    def __init__(self, message: str, transient: bool = False, exit_code: int = 1):
        super().__init__(message)
        self.transient = transient
        self.exit_code = exit_code


def _stage_exit_code(lines: list[str]) -> int | None:
    """The stage command's own exit code from DVC's 'exited with N' message."""
    for line in reversed(lines):
        m = re.search(r"exited with (-?\d+)", line)
        if m:
            return int(m.group(1))
    return None


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything else (lost process, I/O) may pass on retry
        return True
    return False


class WorkspaceBusy(UserError):
    """Another pipeline run holds this workspace's lock (a user error: one line, exit 2)."""

    exit_code = 2


@contextlib.contextmanager
def workspace_lock(root: Path):
    """One pipeline run per workspace: a second is refused at once instead of racing DVC."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / ".craft-run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise WorkspaceBusy(f"another `craft run` is using {root} (lock {root / '.craft-run.lock'}); "
                            "wait for it to finish or use another workspace.") from None
    try:
        yield
    finally:
        lock.release()


def stop_orphaned_servers(prefect_home: str | Path) -> list[int]:
    """Stop temporary Prefect servers left behind by a ``craft run`` of this workspace that was
    killed with SIGKILL (orphans: parent is init); returns their PIDs. Linux only (reads /proc)."""
    import signal

    home, stopped = str(Path(prefect_home).resolve()), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"prefect.server.api.server:create_app" not in b" ".join(cmdline):
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == 1 and environ.get(b"PREFECT_HOME", b"").decode(errors="replace") == home:
            os.kill(int(proc.name), signal.SIGTERM)
            stopped.append(int(proc.name))
    return stopped


def stage_env(parent_run_id: str | None) -> dict[str, str]:
    """The stage's environment: this interpreter first on PATH, the MLflow parent run, the Prefect
    flow run, and this process as the supervisor the stage stops without (lifecycle.py)."""
    from prefect.runtime import flow_run

    bin_dir = str(Path(sys.executable).parent)  # so dvc's `python -m …` is this interpreter
    out = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           lifecycle.SUPERVISOR_ENV: lifecycle.process_token()}
    if parent_run_id:
        out[tracking.PARENT_ENV] = parent_run_id
    if flow_run.id:
        out[tracking.FLOW_RUN_ENV] = str(flow_run.id)
    return out


STOP_GRACE_S = 30
"""Seconds a stage gets to end its MLflow run and clean up after SIGTERM, before SIGKILL."""


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the stage's process group (dvc and the stage under it), SIGKILL it after a grace."""
    import signal

    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stream(cmd: list[str], cwd: Path, parent_run_id: str | None, label: str, logger) -> tuple[int, list[str]]:
    """Run ``cmd`` in its own process group, logging each output line as ``[label] …``; (exit code,
    last 40 lines). Interrupted (Ctrl-C, SIGTERM), it stops the whole group before re-raising."""
    from flows.logs import ProgressThrottle

    tail: list[str] = []
    throttle = ProgressThrottle()  # tqdm bars: first line, then one per 10 s, then the 100% line
    proc = subprocess.Popen(cmd, cwd=cwd, env=stage_env(parent_run_id), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip().split("\r")[-1]  # progress bars: keep the last redraw
            if line and throttle.keep(line):  # throttled redraws stay out of the tail too
                logger.info("[%s] %s", label, line)
                tail = (tail + [line])[-40:]
        for line in throttle.pending():  # bars a failing stage left unfinished: their last state
            logger.info("[%s] %s", label, line)
            tail = (tail + [line])[-40:]
        proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
    return proc.returncode, tail


def _publish(stage: Stage, root: Path, status: str) -> None:
    report = root / "data" / stage.name / stage.report
    if stage.report and report.exists():
        create_markdown_artifact(key=f"{stage.name.replace('_', '-')}-report", markdown=report.read_text(),
                                 description=f"{stage.name}: {status}")


@task(name="dvc-stage", task_run_name="{stage.name}", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=10, retry_condition_fn=_retry_transient)
def run_stage(stage: Stage, workspace: str, parent_run_id: str | None, force: bool = False) -> dict:
    """Run one DVC stage, streaming its output to the Prefect log."""
    logger = get_run_logger()
    root = Path(workspace)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage.name] + (["--force"] if force else [])
    started = time.monotonic()
    returncode, tail = stream(cmd, root, parent_run_id, stage.name, logger)
    seconds = round(time.monotonic() - started, 1)
    if returncode != 0:
        _publish(stage, root, "FAILED")
        report = root / "data" / stage.name / stage.report
        detail = report.read_text() if stage.report and report.exists() else "\n".join(tail)
        code = _stage_exit_code(tail)
        raise StageFailed(f"stage '{stage.name}' failed (exit {code if code is not None else returncode}); "
                          f"later stages were not run.\n{detail}", transient=code not in (1, 2),
                          exit_code=code if code in (1, 2) else 1)
    skipped = any(SKIPPED in l for l in tail)
    _publish(stage, root, "skipped (unchanged)" if skipped else f"ran in {seconds}s")
    return {"stage": stage.name, "status": "skipped" if skipped else "ran", "seconds": seconds}


@flow(name="craft-pipeline", log_prints=True)
def pipeline(workspace: str = ".", stages: list[str] | None = None, force: bool = False,
             register_model: bool = True, push: bool = True) -> list[dict]:
    """Run the CRAFT pipeline's DVC stages in order under one MLflow parent run.

    When the run includes ``evaluate`` and ``register_model`` is true, the trained model is then
    registered as the ``challenger`` (outside DVC); promotion stays a separate, gated step. With
    ``push`` and a default DVC remote configured, the outputs are pushed there at the end.
    """
    from prefect.runtime import flow_run

    root = env.configure(workspace)
    selected = select(stages)
    tracking.ensure_store()
    tags = {"craft.stage": "pipeline", **lineage.git_state(root), **tracking.owner_tags(),
            **({"prefect.flow_run_id": str(flow_run.id)} if flow_run.id else {})}
    with workspace_lock(root):
        tracking.end_stale_runs()  # runs a killed pipeline left RUNNING
        with mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="pipeline", tags=tags) as run, \
                tracking.killed_on_interrupt():
            results = _run_stages(root, selected, run.info.run_id, force, register_model)
        if push:
            from flows.remote import push_if_configured

            push_if_configured(root, get_run_logger())
    return results


def _run_stages(root: Path, selected: list[Stage], run_id: str, force: bool, register_model: bool) -> list[dict]:
    """The stages in order under the open parent run, then registration; lineage and the stage
    table are recorded even when a stage fails or the run is interrupted."""
    results: list[dict] = []
    mlflow.log_params(lineage.params(root))
    try:
        for stage in selected:
            results.append(run_stage(stage, str(root), run_id, force))
        if register_model and "evaluate" in [s.name for s in selected]:
            from flows.registration import register_flow

            version = register_flow(workspace=str(root), parent_run_id=run_id)
            results.append({"stage": "register", "status": f"version {version}", "seconds": 0.0})
    finally:
        mlflow.set_tags(lineage.lock_hashes(root))
        if (root / "dvc.lock").exists():
            mlflow.log_artifact(str(root / "dvc.lock"))
        if results:
            create_table_artifact(key="pipeline-stages", table=results,
                                  description=f"MLflow run {run_id} (experiment {tracking.experiment_id()})")
    return results
