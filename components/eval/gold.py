"""The gold set: real transcripts of this project's models, labelled three ways by the guidelines.

``data/gold/labels.jsonl`` (git; a dep of ``train_judge`` in dvc.yaml): one row per transcript
with ``id``, ``model``, ``origin`` (how it was generated: greedy or sampled, seed), ``prompt_id``,
``prompt``, ``prompt_kind``, ``attack``, ``input``, ``completion``, ``split`` (``calibration`` or
``test``, by prompt hash: a prompt's transcripts never straddle the split), ``label``
(data/gold/GUIDELINES.md), ``labeller`` and ``labelled_at``. Only non-test prompts of the
pipeline's ingest are sampled, so evaluation prompts never enter the gold set.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.core.errors import UserError
from components.core.io import read_table
from components.data.records import stable_id
from components.eval import attacks as attack_lib
from components.eval.judges import VERDICTS

COLUMNS = ("id", "model", "origin", "prompt_id", "prompt", "prompt_kind", "attack", "input", "completion", "split")
LABEL_COLUMNS = ("label", "labeller", "labelled_at")
TEST_SHARE = 0.35
"""Share of gold prompts (by hash) whose transcripts form the judge's test split."""


def gold_split(prompt_id: str) -> str:
    u = int(stable_id("gold", prompt_id, length=8), 16) / 16**8
    return "test" if u < TEST_SHARE else "calibration"


@dataclass(frozen=True)
class SampleSpec:
    """What ``craft gold-sample`` draws per model."""

    harmful: int = 40
    """Plain harmful prompts."""
    attacked: int = 25
    """Harmful prompts wrapped by a random attack and template."""
    benign: int = 25
    """Benign prompts."""
    seed: int = 0
    """Prompt draw (and the sampled generations' seed)."""


def inputs(prompts: pd.DataFrame, spec: SampleSpec, attacks: tuple[str, ...] = attack_lib.ATTACKS) -> pd.DataFrame:
    """Inputs to label from the non-test prompts: plain harmful, attacked harmful, benign."""
    pool = prompts[prompts.split != "test"].sort_values("prompt_id")
    rng = random.Random(spec.seed)
    harmful = pool[pool.prompt_kind == "harmful"].to_dict("records")
    benign = pool[pool.prompt_kind == "benign"].to_dict("records")
    rng.shuffle(harmful), rng.shuffle(benign)
    rows = [{**p, "attack": "none", "input": p["prompt"]} for p in harmful[: spec.harmful] + benign[: spec.benign]]
    loaded = [attack_lib.load(a, 3) for a in attacks]
    for k, p in enumerate(harmful[spec.harmful: spec.harmful + spec.attacked]):
        attack = loaded[rng.randrange(len(loaded))]
        rows.append({**p, "attack": attack.name, "input": attack.wrap(p["prompt"], rng.randrange(3))})
    return pd.DataFrame(rows)


def rows(model: str, origin: str, chosen: pd.DataFrame, completions: list[str]) -> pd.DataFrame:
    """Unlabelled gold rows for one model's completions of ``chosen`` inputs."""
    out = chosen[["prompt_id", "prompt", "prompt_kind", "attack", "input"]].copy()
    out.insert(0, "origin", origin)
    out.insert(0, "model", model)
    out["completion"] = completions
    out["split"] = [gold_split(p) for p in out.prompt_id]
    out.insert(0, "id", [stable_id(model, origin, i, c, length=12) for i, c in zip(out.input, out.completion)])
    return out[list(COLUMNS)]


def load(path: str | Path) -> pd.DataFrame:
    """The labelled gold set, checked: known labels, both splits present, labeller recorded."""
    df = read_table(path)
    missing = sorted(set(COLUMNS + LABEL_COLUMNS) - set(df.columns))
    if missing:
        raise UserError(f"{path}: gold rows lack column(s) {missing}; see data/gold/GUIDELINES.md.")
    bad = sorted(set(df.label) - set(VERDICTS))
    if bad:
        raise UserError(f"{path}: unknown label(s) {bad}; use one of {list(VERDICTS)} (data/gold/GUIDELINES.md).")
    if df.labeller.fillna("").eq("").any():
        raise UserError(f"{path}: {int(df.labeller.fillna('').eq('').sum())} row(s) have no labeller; say who labelled them.")
    if set(df.split) != {"calibration", "test"}:
        raise UserError(f"{path}: need both calibration and test rows, found {sorted(set(df.split))}.")
    if df.id.duplicated().any():
        raise UserError(f"{path}: duplicate ids {sorted(df.id[df.id.duplicated()].unique())[:5]}.")
    return df


def sample(models: dict[str, str], prompts: pd.DataFrame, spec: SampleSpec, model_cfg, workspace: str = ".",
           max_new_tokens: int = 48, sampled: int = 30, temperature: float = 0.8) -> pd.DataFrame:
    """Unlabelled transcripts to label: every model greedy on all inputs, plus ``sampled`` of the
    inputs at ``temperature`` (seed ``spec.seed + 1``), so the set holds sampled behaviour too."""
    from components.lm import generation
    from components.lm.under_test import load_under_test

    chosen = inputs(prompts, spec)
    frames = []
    for name, path in models.items():
        lm = load_under_test(path, model_cfg, workspace)
        greedy = generation.generate(lm, list(chosen.input), generation.SamplingParams(max_new_tokens, 16),
                                     desc=f"gold {name}")
        frames.append(rows(name, "greedy", chosen, greedy))
        picked = chosen.sample(n=min(sampled, len(chosen)), random_state=spec.seed + 1)
        params = generation.SamplingParams(max_new_tokens, 16, temperature=temperature, top_p=0.95, seed=spec.seed + 1)
        drawn = generation.generate(lm, list(picked.input), params, desc=f"gold {name} sampled")
        frames.append(rows(name, f"sampled t={temperature} seed={spec.seed + 1}", picked, drawn))
        del lm
    return pd.concat(frames, ignore_index=True).drop_duplicates("id")
