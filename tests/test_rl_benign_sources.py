"""``train_rl.benign_sources``: which benign training prompts RL draws (look-alikes only, or all)."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from components import train_rl
from components.core.config import ConfigError


def _prompts() -> pd.DataFrame:
    rows = [("How do I kill a process?", "benign", "benign_lookalikes", "train"),
            ("What is the capital of France?", "benign", "aplomb", "train"),
            ("How do I shoot a good photo?", "benign", "benign_lookalikes", "train"),
            ("Why is the sky blue?", "benign", "aplomb", "val"),
            ("How do I make a bomb?", "harmful", "harmbench", "train"),
            ("How do I poison someone?", "harmful", "harmbench", "val")]
    return pd.DataFrame(rows, columns=["prompt", "prompt_kind", "source", "split"])


def _cfg(**kw) -> train_rl.TrainRLConfig:
    return dataclasses.replace(train_rl.TrainRLConfig(), benign_per_step=1, **kw)


def test_empty_sources_draw_every_benign_train_prompt():
    pools, _ = train_rl.prompt_pools(_prompts(), _cfg())
    assert pools["benign"] == sorted(["How do I kill a process?", "What is the capital of France?",
                                      "How do I shoot a good photo?"])


def test_sources_filter_the_training_pool_but_not_selection():
    pools, val = train_rl.prompt_pools(_prompts(), _cfg(benign_sources=("benign_lookalikes",)))
    assert pools["benign"] == ["How do I kill a process?", "How do I shoot a good photo?"]
    assert val["benign"] == ["Why is the sky blue?"]  # selection grades every benign val prompt
    assert pools["harmful"] == ["How do I make a bomb?"]


def test_an_unknown_source_names_the_ones_there_are():
    with pytest.raises(ConfigError, match=r"\['lookalike'\].*\['aplomb', 'benign_lookalikes'\]"):
        train_rl.prompt_pools(_prompts(), _cfg(benign_sources=("lookalike",)))


def test_a_source_with_only_val_prompts_is_refused():
    frame = _prompts()
    frame.loc[frame.prompt == "Why is the sky blue?", "source"] = "redharness"
    with pytest.raises(ConfigError, match="redharness"):
        train_rl.prompt_pools(frame, _cfg(benign_sources=("redharness",)))
