"""Injected faults: torn writes, SIGKILL during RL, unreachable servers, retries."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.core.io import atomic_path, write_text

pytestmark = pytest.mark.reliability


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = write_text(tmp_path / "out.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new cont")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _rl_workspace(root: Path, tiny_model_dir: Path) -> Path:
    from components.head.model import SafetyHead

    root.mkdir(parents=True)
    torch.manual_seed(0)  # both workspaces get the same head
    SafetyHead(32, 16, 8).save(root / "head")
    pd.DataFrame({"prompt": [f"Harm {i}?" for i in range(6)], "prompt_kind": ["harmful"] * 6,
                  "split": ["train"] * 4 + ["val"] * 2}).to_parquet(root / "prompts.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu", "threads": 1},
        "train_rl": {"steps": 40, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "minibatch_size": 2,
                     "ppo_epochs": 1, "judge": "keyword", "benign_per_step": 0, "select_harmful": 1,
                     "select_benign": 0, "select_judge": "keyword", "checkpoint_every": 1, "log_every": 40,
                     "lora_r": 2, "lora_alpha": 4, "lr": 0.005}}))
    return root


def _train(ws: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "components.train_rl", "--prompts", "prompts.parquet",
                             "--head", "head", "--out", "out"], cwd=ws, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


@pytest.mark.slow
def test_sigkilled_train_rl_resumes_to_the_same_adapter(tmp_path, tiny_model_dir):
    clean, killed = _rl_workspace(tmp_path / "clean", tiny_model_dir), _rl_workspace(tmp_path / "killed", tiny_model_dir)
    assert _train(clean).wait(300) == 0
    proc = _train(killed)
    ckpts = killed / ".cache" / "checkpoints" / "train_rl"
    deadline = time.monotonic() + 300
    def newest() -> int:  # older checkpoints are pruned, so look at any complete one
        return max((int(p.parent.name.split("-")[1]) for p in ckpts.glob("*/step-*/done")), default=-1)

    while time.monotonic() < deadline and newest() < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "out" / "adapter").exists()  # it really died before finishing
    assert _train(killed).wait(300) == 0  # resumes from the newest complete checkpoint
    for name in ("out/adapter/adapter_model.safetensors",  # the selected adapter, and the trained one
                 ".cache/checkpoints/train_rl/*/step-000039/adapter.safetensors"):
        (a_path,), (b_path,) = list(clean.glob(name)), list(killed.glob(name))
        a, b = load_file(str(a_path)), load_file(str(b_path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unreachable_mlflow_server_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["run", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "MLflow tracking server at http://127.0.0.1:9/health is unreachable" in err and "Traceback" not in err


def test_unreachable_prefect_api_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["run", "--workspace", str(tmp_path)]) == 2
    assert "Prefect API at http://127.0.0.1:9/api/health is unreachable" in capsys.readouterr().err


def test_corrupt_checkpoint_is_skipped(tmp_path):
    """A checkpoint without its 'done' marker (killed mid-save) is never resumed from."""
    from components.rl import checkpoint

    (tmp_path / "step-000003").mkdir()
    (tmp_path / "step-000003" / "adapter.safetensors").write_bytes(b"torn")
    (tmp_path / "step-000001").mkdir()
    (tmp_path / "step-000001" / "done").write_text("1")
    assert checkpoint.latest(tmp_path).name == "step-000001"


def test_retried_stage_reuses_its_mlflow_run(tmp_path, monkeypatch):
    """A task retry after a transient failure must not leave two runs of one stage."""
    import mlflow

    from components.core import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    tracking.ensure_store()
    parent = mlflow.MlflowClient().create_run(tracking.experiment_id(), run_name="pipeline")  # held by the flow
    monkeypatch.setenv(tracking.PARENT_ENV, parent.info.run_id)
    with pytest.raises(RuntimeError):
        with tracking.stage_run("curate") as first:
            raise RuntimeError("lost the worker")
    with tracking.stage_run("curate") as second:
        pass
    mlflow.set_tracking_uri(None)
    assert first.info.run_id == second.info.run_id


def test_stage_exit_codes_decide_retries():
    from flows.pipeline import StageFailed, _stage_exit_code

    assert _stage_exit_code(["ERROR: failed to reproduce 'validate': failed to run: python -m x, exited with 1"]) == 1
    assert _stage_exit_code(["killed"]) is None
    assert not StageFailed("bad data", transient=False).transient
