"""How much the headline results move with the training seed.

A seed sweep re-runs the pipeline with every training stage's ``seed`` set to s (``SEEDED``) and
the held-out split fixed (``ingest.seed`` is not varied), so the spread it reports is training
randomness alone: curation sampling, extraction word dropout, head initialisation and batches, SFT
batches, RL rollouts. Each finished run gives one value per metric; the spread of a metric over
n runs is mean, sample standard deviation (n − 1 in the denominator; 0 for one run), min and max.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from components.core.config import ConfigError, require
from components.eval.stats import across_seeds

SEEDED = ("curate", "extract", "train_head", "train_sft", "train_rl")
"""Stages with a ``seed`` key that the sweep sets (``train_rl_text`` inherits ``train_rl``'s)."""

HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("evaluate", "base/response_asr", "base response ASR"),
    ("evaluate", "train_sft/refusal_rate", "SFT refusal rate"),
    ("evaluate", "train_rl_text/refusal_rate", "RL text-only refusal rate"),
    ("evaluate", "train_rl/refusal_rate", "CRAFT refusal rate"),
    ("evaluate", "train_rl/degenerate_rate", "CRAFT degenerate rate"),
    ("evaluate", "train_sft/response_asr", "SFT response ASR"),
    ("evaluate", "train_rl_text/response_asr", "RL text-only response ASR"),
    ("evaluate", "train_rl/response_asr", "CRAFT response ASR"),
    ("evaluate", "train_sft/over_refusal", "SFT over-refusal"),
    ("evaluate", "train_rl_text/over_refusal", "RL text-only over-refusal"),
    ("evaluate", "train_rl/over_refusal", "CRAFT over-refusal"),
    ("train_head", "head/auroc", "head AUROC"),
    ("train_head", "baseline/diffmeans_auroc", "difference-of-means AUROC"),
    ("train_rl", "probe_refusal_rate_end", "RL probe refusal (end)"),
)
"""(stage, key in data/<stage>/metrics.json, label) of the figures the README reports."""

PERCENT = ("asr", "refusal")


@dataclass(frozen=True)
class SweepConfig:
    """``craft seeds``: which seeds to run besides the committed run."""

    seeds: tuple[int, ...] = (1, 2)
    """Training seeds, each a full pipeline run (~12 min on a 2-core CPU) as a DVC experiment."""

    def __post_init__(self) -> None:
        require(len(self.seeds) >= 1, "--seeds: give at least one seed, e.g. --seeds 1,2.")
        require(all(s >= 0 for s in self.seeds), "--seeds: seeds must be >= 0.")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds: {list(self.seeds)} repeats a seed.")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` → (1, 2, 3), with an error that says what is wrong."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: use comma-separated integers, e.g. 1,2,3.") from None


def overrides(seed: int) -> list[str]:
    """``dvc exp run -S`` assignments that set every training stage's seed to ``seed``; ``++`` (Hydra:
    add or override) also works for a params.yaml that leaves ``seed`` at its default."""
    return [f"++{stage}.seed={seed}" for stage in SEEDED]


def headline(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The HEADLINE figures of one run from its per-stage metrics ({stage: {key: value}})."""
    return {label: float(metrics.get(stage, {}).get(key, math.nan)) for stage, key, label in HEADLINE}


def spread(runs: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Per metric: each run's value, then n, mean, sd, min, max and a 95% t interval of the mean
    (``ci_lo``, ``ci_hi``; NaN below two runs) over the runs that have it."""
    rows = []
    for _, _, label in HEADLINE:
        values = {name: run[label] for name, run in runs.items() if not math.isnan(run.get(label, math.nan))}
        xs = list(values.values())
        n = len(xs)
        sd = statistics.stdev(xs) if n > 1 else (0.0 if n else math.nan)  # sample sd (n − 1)
        ci = across_seeds(xs)
        rows.append({"metric": label, **values, "n": n, "mean": statistics.fmean(xs) if n else math.nan, "sd": sd,
                     "min": min(xs, default=math.nan), "max": max(xs, default=math.nan),
                     "ci_lo": ci.lo, "ci_hi": ci.hi})
    return rows


def _fmt(label: str, v: float) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.1%}" if any(p in label.lower() for p in PERCENT) else f"{v:.3f}"


def markdown(rows: Sequence[dict], run_names: Sequence[str]) -> str:
    """The spread as a markdown table: one column per run, then mean ± sd and the range."""
    head = "| metric | " + " | ".join(run_names) + " | mean ± sd | 95% CI of the mean | range |"
    lines = [head, "|---" * (len(run_names) + 4) + "|"]
    for r in rows:
        label = r["metric"]
        cells = [_fmt(label, r.get(name, math.nan)) for name in run_names]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {_fmt(label, r['mean'])} ± {_fmt(label, r['sd'])} | "
                     f"{_fmt(label, r.get('ci_lo', math.nan))}–{_fmt(label, r.get('ci_hi', math.nan))} | "
                     f"{_fmt(label, r['min'])}–{_fmt(label, r['max'])} |")
    return "\n".join(lines)
