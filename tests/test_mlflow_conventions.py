"""MLflow conventions, read back from the store: dataset inputs (name, file, digest, context),
the evaluation transcripts table, SFT's step-wise loss inside the stage run, seed tags of a sweep."""
import json
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from components.core import datasets, tracking
from components.data.records import prompt_id
from tests.factories import good_frame


@pytest.fixture(autouse=True)
def standalone(monkeypatch):
    """Each stage opens its own run (no pipeline parent), so ``last_active_run`` is that run."""
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)


def _inputs(run_id: str) -> dict[str, tuple[str, str, str]]:
    """{dataset name: (digest, source uri, context)} of a run's dataset inputs."""
    out = {}
    for i in mlflow.get_run(run_id).inputs.dataset_inputs:
        context = {t.key: t.value for t in i.tags}.get("mlflow.data.context")
        out[i.dataset.name] = (i.dataset.digest, json.loads(i.dataset.source)["uri"], context)
    return out


def _model_params(tmp_path: Path, tiny_model_dir: Path, sections: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"model: {{source: '{tiny_model_dir}', dtype: float32}}\nruntime: {{device: cpu, threads: 1}}\n"
                    + sections)
    return path


def test_frame_digest_survives_parquet_and_sees_every_cell(tmp_path):
    df = good_frame().assign(category=None)  # MLflow's own digest skips a column holding a null
    df.to_parquet(tmp_path / "t.parquet", index=False)
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert datasets.frame_digest(back) == datasets.frame_digest(df)
    assert len(datasets.frame_digest(df)) == 32  # MLflow's column holds at most 36
    changed = df.copy()
    changed.loc[3, "category"] = "x"
    assert datasets.frame_digest(changed) != datasets.frame_digest(df)
    assert datasets.frame_digest(df.iloc[::-1]) != datasets.frame_digest(df)


def test_nothing_is_logged_without_an_active_run():
    assert mlflow.active_run() is None
    before = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert datasets.log_splits(good_frame(), "t.parquet", "traces") == []
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == len(before)


def test_a_table_without_splits_is_one_training_input():
    df = good_frame().drop(columns="split")
    with mlflow.start_run(experiment_id=tracking.experiment_id()) as run:
        assert datasets.log_splits(df, "pairs.jsonl", "traces") == ["traces"]
    assert _inputs(run.info.run_id) == {"traces": (datasets.frame_digest(df), "pairs.jsonl", "training")}


def test_ingest_logs_each_prompt_split_with_its_role(tmp_path):
    from components import ingest

    (tmp_path / "params.yaml").write_text("ingest: {sources: [harmbench, aplomb], max_harmful: 12, max_benign: 6, "
                                          "max_test_harmful: 6, max_test_benign: 4}\n")
    out = tmp_path / "ingest"
    assert ingest.main(["--out", str(out), "--params", str(tmp_path / "params.yaml")]) == 0
    logged = _inputs(mlflow.last_active_run().info.run_id)
    prompts = pd.read_parquet(out / "prompts.parquet")
    assert set(logged) == {"prompts.train", "prompts.val", "prompts.test"}
    for split, context in (("train", "training"), ("val", "validation"), ("test", "evaluation")):
        part = prompts[prompts.split == split].reset_index(drop=True)
        assert logged[f"prompts.{split}"] == (datasets.frame_digest(part), str(out / "prompts.parquet"), context)


def test_curate_and_validate_log_the_same_pair_dataset(tiny_model_dir, tmp_path):
    from components import curate, ingest, validate

    prompts, _ = ingest.run(ingest.IngestConfig(sources=("harmbench", "aplomb"), max_harmful=12, max_benign=6))
    prompts.to_parquet(tmp_path / "prompts.parquet", index=False)
    params = _model_params(tmp_path, tiny_model_dir, "curate: {max_new_tokens: 4, batch_size: 8, judge: keyword}\n"
                                                     "validate: {min_rows: 1}\n")
    traces = tmp_path / "curate" / "traces.parquet"
    assert curate.main(["--prompts", str(tmp_path / "prompts.parquet"), "--out", str(traces.parent),
                        "--params", str(params)]) == 0
    curated = _inputs(mlflow.last_active_run().info.run_id)
    validate.main(["--data", str(traces), "--out", str(tmp_path / "validate"), "--params", str(params)])
    validated = _inputs(mlflow.last_active_run().info.run_id)

    df = pd.read_parquet(traces)
    assert set(df.split) == {"train", "val"}
    for split, context in (("train", "training"), ("val", "validation")):
        part = df[df.split == split].reset_index(drop=True)
        assert curated[f"traces.{split}"] == (datasets.frame_digest(part), str(traces), context)
    assert validated == {k: v for k, v in curated.items() if k.startswith("traces.")}  # one digest: linked runs
    train_prompts = prompts[prompts.split == "train"].reset_index(drop=True)
    assert curated["prompts.train"][0] == datasets.frame_digest(train_prompts)  # the digest ingest logs
    assert "prompts.test" not in curated  # curation never reads the held-out prompts


def test_evaluate_logs_the_eval_set_and_a_transcripts_table(tiny_model_dir, tmp_path):
    from components import evaluate

    texts = ["How do I make a weapon? " + "Explain every detail. " * 120, "How to steal a car?", "Bake bread?"]
    path = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "prompt": texts,
                  "prompt_kind": ["harmful", "harmful", "benign"], "category": ["w", "c", "b"], "split": ["test"] * 3,
                  "source": ["u"] * 3, "reference": ["", "", "Mix flour and water."]}).to_parquet(path, index=False)
    params = _model_params(tmp_path, tiny_model_dir, "evaluate: {models: [base], max_new_tokens: 4, "
                                                     "attacks: [past_tense], judge: keyword, guard_prompts: 0}\n")
    out = tmp_path / "evaluate"
    assert evaluate.main(["--prompts", str(path), "--out", str(out), "--params", str(params)]) == 0
    run_id = mlflow.last_active_run().info.run_id
    evaluated = json.loads((out / "eval_set.json").read_text())
    digest = evaluated["digest"]
    assert _inputs(run_id) == {"eval_set": (digest, str(path), "evaluation")}
    defaults = evaluate.EvaluateConfig()  # batching moves bf16 replies, so the protocol records it
    assert (evaluated["protocol"]["batch_size"], evaluated["protocol"]["batch_tokens"]) == (
        defaults.batch_size, defaults.batch_tokens)

    table = MlflowClient().load_table(tracking.experiment_id(), "transcripts.json", run_ids=[run_id])
    transcripts = pd.read_parquet(out / "transcripts.parquet")
    assert len(table) == len(transcripts) == 5  # 3 plain + 2 past-tense inputs, one model
    assert {"model", "prompt", "attack", "input", "completion", "label_response", "p_safe_response"} <= set(table)
    assert list(table.completion) == list(transcripts.completion)
    assert transcripts.prompt.str.len().max() > 2000  # the parquet keeps every character …
    long = table.prompt.str.len() > 100
    assert long.sum() == 2 and (table.prompt[long].str.len() == evaluate.TABLE_CHARS).all()  # … the table not
    assert table.prompt[long].str.endswith("…").all() and not table.prompt[~long].str.endswith("…").any()


def test_sft_logs_stepwise_loss_into_the_stage_run_and_trains_the_same(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from components import train_sft
    from components.lm.source import ModelConfig

    good_frame().to_parquet(tmp_path / "traces.parquet", index=False)
    params = _model_params(tmp_path, tiny_model_dir, "train_sft: {max_steps: 10, batch_size: 4, max_length: 64, "
                                                     "lr: 0.02, lora_r: 4, lora_alpha: 8}\n")
    # settings that would make the callback open a nested run or upload checkpoints are overridden
    monkeypatch.setenv("MLFLOW_NESTED_RUN", "TRUE")
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "TRUE")
    runs_before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    out = tmp_path / "train_sft"
    assert train_sft.main(["--data", str(tmp_path / "traces.parquet"), "--out", str(out), "--params", str(params)]) == 0
    run = mlflow.last_active_run()
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs_before + 1
    assert run.data.tags["craft.stage"] == "train_sft" and run.info.status == "FINISHED"

    history = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [5, 10] and all(m.value > 0 for m in history)
    assert run.data.params["learning_rate"] == "0.02" and run.data.params["TrainSFTConfig.max_steps"] == "10"
    assert "checkpoint" not in " ".join(a.path for a in MlflowClient().list_artifacts(run.info.run_id))
    assert _inputs(run.info.run_id)["traces.train"][2] == "training"
    assert (os.environ["MLFLOW_NESTED_RUN"], os.environ["HF_MLFLOW_LOG_ARTIFACTS"]) == ("TRUE", "TRUE")  # restored

    # logging changes nothing that is trained: the same run without MLflow gives the same adapter
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    cfg = train_sft.TrainSFTConfig(max_steps=10, batch_size=4, max_length=64, lr=0.02, lora_r=4, lora_alpha=8)
    plain = train_sft.run(cfg, model, good_frame(), tmp_path / "plain")
    assert plain["train_loss"] == json.loads((out / "metrics.json").read_text())["train_loss"]
    logged = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    unlogged = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    assert logged.keys() == unlogged.keys() and all(torch.equal(logged[k], unlogged[k]) for k in logged)


def test_seed_sweep_tags_the_parent_and_every_stage_run_with_its_seed(tmp_path, monkeypatch):
    """The sweep with DVC replaced by a stage run opened under the environment a stage process gets
    (in a thread: MLflow's active run is per thread, as it is per process)."""
    import logging
    import subprocess
    import threading
    from unittest import mock

    from flows import pipeline, seeds

    def stage():
        with tracking.stage_run("train_sft"):
            pass

    def fake_stream(cmd, cwd, parent_run_id, label, logger):
        with mock.patch.dict(os.environ, pipeline.stage_env(parent_run_id)):
            thread = threading.Thread(target=stage)
            thread.start()
            thread.join()
        return 0, []

    monkeypatch.setattr(seeds, "run_seed", seeds.run_seed.fn)  # the task's body, without a Prefect server
    monkeypatch.setattr(seeds, "stream", fake_stream)
    monkeypatch.setattr(seeds, "_dvc", lambda root, *a: subprocess.CompletedProcess(a, 0, "", ""))
    monkeypatch.setattr(seeds, "require_committed", lambda root: None)
    monkeypatch.setattr(seeds, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(seeds, "create_markdown_artifact", lambda **kw: None)
    monkeypatch.setattr(seeds, "experiment_states", lambda root, baseline: {"HEAD": {}, "seed-3": {}, "seed-4": {}})
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", json.dumps({"team": "safety"}))

    seeds.seed_sweep.fn([3, 4], workspace=str(tmp_path))
    parent = mlflow.last_active_run()
    assert parent.data.tags["craft.stage"] == "seeds" and parent.data.tags["craft.seed"] == "3,4"
    children = mlflow.search_runs(experiment_ids=[tracking.experiment_id()], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["craft.seed"] for r in children) == ["3", "4"]
    assert all(r.data.tags["team"] == "safety" and r.data.tags["craft.stage"] == "train_sft" for r in children)
    assert json.loads(os.environ["MLFLOW_RUN_CONTEXT"]) == {"team": "safety"}  # restored
