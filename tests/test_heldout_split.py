"""Held-out test prompts never reach curation, SFT or RL (the evaluation would grade its own training data)."""
from __future__ import annotations

import dataclasses

import pytest

from components import curate, ingest, train_rl
from components.core.config import ConfigError
from components.lm.source import ModelConfig


@pytest.fixture(scope="module")
def prompts():
    cfg = ingest.IngestConfig(sources=("harmbench", "aplomb", "redharness"), max_harmful=24, max_benign=12,
                              max_val_benign=None, max_test_harmful=20, max_test_benign=10)
    df, _ = ingest.run(cfg)
    assert set(df.split) == {"train", "val", "test"}
    return df


def test_ingest_caps_the_training_pool_and_the_test_set_separately(prompts):
    counts = prompts.groupby(["prompt_kind", "split"]).size()
    assert counts["harmful"]["test"] == 20 and counts["benign"]["test"] == 10
    assert counts["harmful"][["train", "val"]].sum() == 24 and counts["benign"][["train", "val"]].sum() == 12


def test_a_test_prompt_keeps_its_split_when_caps_change(prompts):
    bigger, _ = ingest.run(ingest.IngestConfig(sources=("harmbench", "aplomb", "redharness"), max_harmful=60,
                                               max_benign=30, max_val_benign=None, max_test_harmful=40,
                                               max_test_benign=20))
    split = dict(zip(bigger.prompt_id, bigger.split))
    assert all(split.get(pid, "test") == "test" for pid in prompts[prompts.split == "test"].prompt_id)


def test_curation_and_rl_never_see_test_prompts(prompts, tiny_model_dir, tmp_path):
    test_ids = set(prompts[prompts.split == "test"].prompt_id)
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    cfg = curate.CurateConfig(max_new_tokens=4, batch_size=16, judge="keyword")
    traces, _ = curate.run(cfg, model, prompts, tmp_path)
    assert len(traces) and not set(traces.prompt_id) & test_ids  # SFT trains on these traces only
    pools, val = train_rl.prompt_pools(prompts, dataclasses.replace(train_rl.TrainRLConfig(), benign_per_step=1))
    seen = {p for texts in (*pools.values(), *val.values()) for p in texts}
    test_texts = set(prompts[prompts.split == "test"].prompt)
    assert pools["harmful"] and pools["benign"] and val["harmful"] and not seen & test_texts


def test_curation_refuses_the_test_split():
    with pytest.raises(ConfigError, match="held out for evaluation"):
        curate.CurateConfig(splits=("train", "test"))
