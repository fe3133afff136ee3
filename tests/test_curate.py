import pandas as pd

from components.curate import CurateConfig, run, stats
from components.ingest import IngestConfig
from components.ingest import run as ingest
from components.lm.source import ModelConfig
from components.data.records import TRACE_COLUMNS
from components.validate import ValidateConfig
from components.validate import run as validate


def _curate(tiny_model_dir):
    prompts, _ = ingest(IngestConfig(sources=("harmbench", "aplomb"), max_harmful=12, max_benign=6))
    cfg = CurateConfig(max_new_tokens=6, batch_size=8, temperature=1.0, judge="keyword")
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    return prompts, run(cfg, model, prompts)


def test_curate_builds_valid_pairs_without_test_prompts(tiny_model_dir, tmp_path):
    prompts, df = _curate(tiny_model_dir)
    assert list(df.columns) == list(TRACE_COLUMNS)
    test_ids = set(prompts[prompts.split == "test"].prompt_id)
    assert test_ids and not (set(df.prompt_id) & test_ids)
    harmful = df[df.prompt_kind == "harmful"].groupby("prompt_id").label.agg(set)
    assert all({"safe", "unsafe", "rethink"} <= labels for labels in harmful)
    assert (df[df.prompt_kind == "benign"].label == "safe").all()
    assert df.trace_id.is_unique
    path = tmp_path / "traces.parquet"
    df.to_parquet(path)
    report = validate(path, ValidateConfig(min_rows=10))
    assert report.success, [f for f in report.failed]
    s = stats(df)
    assert s["rows"] == len(df) and 0.0 <= s["model_refusal_rate"] <= 1.0


def test_rethink_opens_with_the_models_own_unsafe_words(tiny_model_dir):
    _, df = _curate(tiny_model_dir)
    model_unsafe = df[(df.origin == "model") & (df.label == "unsafe")].set_index("prompt_id").trace
    rethink = df[df.label == "rethink"].set_index("prompt_id").trace
    pid = next(p for p in rethink.index if p in model_unsafe.index and model_unsafe[p].split())
    assert rethink[pid].startswith(model_unsafe[pid].split()[0]) and "Wait." in rethink[pid]
