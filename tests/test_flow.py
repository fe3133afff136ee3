"""Flow smoke test: the Prefect pipeline over real DVC stages and MLflow, on a tiny model."""
from __future__ import annotations

import json
import os

import mlflow
import pytest
import yaml

from tests.conftest import make_workspace


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _params(tiny_model_dir, **overrides) -> str:
    params = {
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu", "threads": 1},
        "ingest": {"sources": ["harmbench", "aplomb"], "max_harmful": 16, "max_benign": 8, "max_val_benign": 2,
                   "max_test_harmful": 4, "max_test_benign": 2},
        "curate": {"max_new_tokens": 6, "batch_size": 8, "temperature": 1.0, "judge": "keyword"},
        "validate": {"min_rows": 10},
        "extract": {"batch_size": 8},
        "train_head": {"hidden_dim": 32, "out_dim": 16, "epochs": 3, "batch_size": 8},
        "train_rl": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6,
                     "minibatch_size": 2, "ppo_epochs": 1, "judge": "keyword", "select_harmful": 2,
                     "select_benign": 1,
                     "lora_r": 4, "lora_alpha": 8},
        "train_sft": {"max_steps": 2, "batch_size": 4, "max_length": 64, "lora_r": 4, "lora_alpha": 8},
        "train_rl_text": {"w_lat": 0.0, "w_cons": 0.0, "w_txt": 1.0},
        "evaluate": {"max_harmful": 4, "max_benign": 2, "max_new_tokens": 4, "attacks": ["past_tense"],
                     "attack_prompts": 2, "guard_prompts": 1},
        "train_judge": {"compare": ["keyword"]},
        "train_router": {"folds": 2},
        "promote": {"model_name": "flow-test"},
    }
    for section, values in overrides.items():
        params[section].update(values)
    return yaml.safe_dump(params)


def test_pipeline_runs_skips_and_stops_on_bad_data(harness, tiny_model_dir, tmp_path):
    from flows.pipeline import StageFailed, pipeline

    ws = make_workspace(tmp_path / "ws", _params(tiny_model_dir))
    first = pipeline(workspace=str(ws))
    assert [r["stage"] for r in first] == ["sources", "ingest", "curate", "validate", "extract", "train_head", "train_sft",
                                           "train_judge", "train_router", "train_rl_text", "train_rl", "evaluate",
                                           "register"]
    assert all(r["status"] == "ran" for r in first[:-1]) and first[-1]["status"] == "version 1"
    assert (ws / "data" / "validate" / "report.md").read_text().startswith("# Pair dataset validation: PASSED")

    assert "| CRAFT |" in (ws / "data" / "evaluate" / "report.md").read_text()
    assert (ws / "data" / "evaluate" / "eval_set.json").exists()

    again = pipeline(workspace=str(ws))
    assert again[0]["stage"] == "sources" and again[0]["status"] == "ran"  # always_changed: re-hashes the files
    assert all(r["status"] == "skipped" for r in again[1:-1]), again  # same files: nothing else re-runs
    assert again[-1]["status"] == "version 1"  # same model and metrics: no duplicate version

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("craft")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("craft.stage") == "pipeline"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["curate", "evaluate", "extract", "ingest", "register",
                                                         "train_head", "train_judge", "train_rl", "train_rl_text",
                                                         "train_router",
                                                         "train_sft", "validate"]
    assert any(k.startswith("dvc.curate.") for k in parents[0].data.tags)

    def stage_runs(name):
        return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]

    n_extract = len(stage_runs("extract"))
    (ws / "params.yaml").write_text(_params(tiny_model_dir, validate={"min_rows": 100000}))
    with pytest.raises(StageFailed, match="validate"):
        pipeline(workspace=str(ws))
    assert "at least 100000 rows" in (ws / "data" / "validate" / "report.md").read_text()
    assert len(stage_runs("extract")) == n_extract  # no stage after validate ran


@pytest.mark.slow
def test_seed_sweep_runs_dvc_experiments_and_reports_the_spread(harness, tiny_model_dir, tmp_path):
    """``craft seeds`` end to end: refused while uncommitted, then one DVC experiment beside the
    committed run, the spread written, and the workspace's own outputs left as they were."""
    import subprocess

    from flows.pipeline import pipeline
    from flows.seeds import UncommittedChanges, seed_sweep

    ws = make_workspace(tmp_path / "ws", _params(tiny_model_dir))
    (ws / ".gitignore").write_text("mlruns/\n.prefect/\n.cache/\n.craft-run.lock\nseeds/\n")
    pipeline(workspace=str(ws), register_model=False)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=ws,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout
    git("add", "-A")
    with pytest.raises(UncommittedChanges):
        seed_sweep([1], workspace=str(ws))
    git("commit", "-qm", "baseline")
    lock_before = (ws / "dvc.lock").read_text()
    rows = {r["metric"]: r for r in seed_sweep([1], workspace=str(ws))}
    assert rows["head AUROC"]["n"] == 2 and {"HEAD", "seed-1"} <= set(rows["head AUROC"])
    assert "| metric | HEAD | seed-1 | mean ± sd | 95% CI of the mean | range |" in (ws / "seeds" / "spread.md").read_text()
    sweep = json.loads((ws / "seeds" / "sweep.json").read_text())  # what `craft promote --seeds` matches
    assert sweep["scope"] == "rl" and sweep["runs"] == ["HEAD", "seed-1"]
    assert sweep["lock"]["dvc.train_rl.data/train_rl/adapter"] in lock_before
    assert rows["head AUROC"]["sd"] == 0  # scope rl: the head is the committed run's
    vs = {t["b"]: t for t in sweep["paired"] if t["a"] == "train_rl"}  # read from the DVC cache at each run's commit
    assert set(vs) == {"train_rl_text", "base"} and all(t["runs"] == 2 and 0 < t["p_value"] <= 1 for t in vs.values())
    routed = {(t["b"], t["measure"]) for t in sweep["paired"] if t["a"] == "train_rl_routed"}  # base evaluated too
    assert routed == {("train_rl_text_routed", "refusal rate − over-refusal"), ("base", "refusal rate − over-refusal"),
                      ("train_rl", "refusal rate − over-refusal"), ("train_rl", "over-refusal"), ("train_rl", "refusal rate")}
    assert "sign-flip permutation test over prompts (each prompt's runs flipped together)" in (ws / "seeds" / "spread.md").read_text()
    assert set(sweep["minutes"]) == {"seed-1"} and sweep["minutes"]["seed-1"] > 0  # `craft seeds` states its time
    assert "Wall time per experiment here: seed-1" in (ws / "seeds" / "spread.md").read_text()
    spread = (ws / "seeds" / "spread.json").read_text()
    (ws / "seeds" / "spread.json").unlink()
    from flows.seeds import rewrite_report  # `craft seeds --report`: the same files, no experiment run

    rewrite_report(str(ws))
    assert (ws / "seeds" / "spread.json").read_text() == spread
    assert json.loads((ws / "seeds" / "sweep.json").read_text())["minutes"] == sweep["minutes"]  # kept from the sweep
    assert (ws / "dvc.lock").read_text() == lock_before and git("status", "--porcelain", "--untracked-files=no") == ""
