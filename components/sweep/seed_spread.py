"""How much the headline results move with the training seed.

A seed sweep re-runs the pipeline with some stages' ``seed`` set to s and the held-out split
fixed (``ingest.seed`` is never varied). The ``scope`` says which stages (``SCOPES``):

- ``rl`` (the default): ``train_rl`` and the text-only ablation ``train_rl_text``, which inherits
  its seed. Curation, extraction, the head and SFT stay those of the committed run, so the spread
  is RL randomness alone (LoRA initialisation, prompt order, rollouts). The SFT rows then repeat
  the committed run's values.
- ``all``: every training stage (``SEEDED``): curation sampling, extraction word dropout, head
  initialisation and batches, SFT batches, the prompt router's cross-validation folds, RL rollouts.

Each finished run gives one value per metric; the spread of a metric over n runs is mean, sample
standard deviation (n − 1 in the denominator; 0 for one run), min, max and a 95% t interval of
the mean; a rate's interval is clipped to [0, 1], the range a mean of rates can take. Besides
the fixed ``HEADLINE`` rows, each run's over-refusal per benign source (``over_refusal_<source>``
in evaluate's metrics, for base, the text-only ablation and CRAFT) gets a row of its own
(``source_rows``): the sources are the ones that run was evaluated on, so a row is absent where
no run has it.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from components.core.config import ConfigError, require
from components.eval.stats import across_seeds

SEEDED = ("curate", "extract", "train_head", "train_sft", "train_router", "train_rl")
"""Stages with a ``seed`` key (``train_rl_text`` inherits ``train_rl``'s)."""
SCOPES: dict[str, tuple[str, ...]] = {"rl": ("train_rl",), "all": SEEDED}
"""``craft seeds --scope``: the stages whose seed a sweep sets."""

HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("evaluate", "base/response_asr", "base response ASR"),
    ("evaluate", "base/refusal_rate", "base refusal rate"),
    ("evaluate", "base/over_refusal", "base over-refusal"),
    ("evaluate", "base/degenerate_rate", "base degenerate rate"),
    ("evaluate", "train_sft/refusal_rate", "SFT refusal rate"),
    ("evaluate", "train_rl_text/refusal_rate", "RL text-only refusal rate"),
    ("evaluate", "train_rl/refusal_rate", "CRAFT refusal rate"),
    ("evaluate", "train_rl_text/phrased_refusal_rate", "RL text-only refusals with a refusal phrase"),
    ("evaluate", "train_rl/phrased_refusal_rate", "CRAFT refusals with a refusal phrase"),
    ("evaluate", "train_sft/degenerate_rate", "SFT degenerate rate"),
    ("evaluate", "train_rl_text/degenerate_rate", "RL text-only degenerate rate"),
    ("evaluate", "train_rl/degenerate_rate", "CRAFT degenerate rate"),
    ("evaluate", "train_sft/response_asr", "SFT response ASR"),
    ("evaluate", "train_rl_text/response_asr", "RL text-only response ASR"),
    ("evaluate", "train_rl/response_asr", "CRAFT response ASR"),
    ("evaluate", "train_sft/over_refusal", "SFT over-refusal"),
    ("evaluate", "train_rl_text/over_refusal", "RL text-only over-refusal"),
    ("evaluate", "train_rl/over_refusal", "CRAFT over-refusal"),
    ("evaluate", "train_rl/utility_nll", "CRAFT utility NLL"),
    ("evaluate", "train_sft_routed/refusal_rate", "SFT + router refusal rate"),
    ("evaluate", "train_rl_text_routed/refusal_rate", "RL text-only + router refusal rate"),
    ("evaluate", "train_rl_routed/refusal_rate", "CRAFT + router refusal rate"),
    ("evaluate", "train_sft_routed/over_refusal", "SFT + router over-refusal"),
    ("evaluate", "train_rl_text_routed/over_refusal", "RL text-only + router over-refusal"),
    ("evaluate", "train_rl_routed/over_refusal", "CRAFT + router over-refusal"),
    ("evaluate", "train_rl_routed/response_asr", "CRAFT + router response ASR"),
    ("evaluate", "train_rl_routed/degenerate_rate", "CRAFT + router degenerate rate"),
    ("evaluate", "train_rl_routed/utility_nll", "CRAFT + router utility NLL"),
    ("evaluate", "base/utility_nll", "base utility NLL"),
    ("train_head", "head/auroc", "head AUROC"),
    ("train_head", "baseline/diffmeans_auroc", "difference-of-means AUROC"),
    ("train_rl", "probe_refusal_rate_end", "RL probe refusal (end)"),
    ("train_rl", "obfuscation_gap_end", "CRAFT obfuscation gap (end)"),
)
"""(stage, key in data/<stage>/metrics.json, label) of the figures the README reports."""

RATE_SUFFIXES = ("_asr", "_rate", "over_refusal", "_rate_end")
"""Metric keys ending so are shares in [0, 1]: printed as percentages, their intervals clipped to [0, 1]."""
RATE_LABELS = frozenset(label for _, key, label in HEADLINE if key.endswith(RATE_SUFFIXES))
"""HEADLINE labels of the rates (``rules.RATES`` lists metric stems, a different thing)."""


SOURCE_MODELS: dict[str, str] = {"base": "base", "train_rl_text": "RL text-only", "train_rl": "CRAFT",
                                 "train_rl_routed": "CRAFT + router"}
"""Model key in evaluate's metrics → label, for the over-refusal-per-benign-source rows."""
_SOURCE_KEY = re.compile(r"^(%s)/over_refusal_(\w+)$" % "|".join(map(re.escape, SOURCE_MODELS)))
_SOURCE_LABEL = re.compile(r"^(%s) over-refusal \((\w+)\)$" % "|".join(map(re.escape, SOURCE_MODELS.values())))
_BOUNDS = ("_lo", "_hi", "_n")
"""Suffixes of a rate's interval and count keys (``over_refusal_<source>_lo`` …): not rows."""


@dataclass(frozen=True)
class SweepConfig:
    """``craft seeds``: which seeds to run besides the committed run, and which stages they reseed."""

    seeds: tuple[int, ...] = (1, 2)
    """Training seeds, each one DVC experiment (seeds/sweep.json records each one's wall minutes)."""
    scope: str = "rl"
    """Which stages get the seed: ``rl`` (train_rl and its ablation; curation and head fixed) or ``all``."""

    def __post_init__(self) -> None:
        require(self.scope in SCOPES, f"--scope {self.scope!r}: use one of {', '.join(SCOPES)} "
                                      "(rl: only the RL stages; all: every training stage).")
        require(len(self.seeds) >= 1, "--seeds: give at least one seed, e.g. --seeds 1,2.")
        require(all(s >= 0 for s in self.seeds), "--seeds: seeds must be >= 0.")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds: {list(self.seeds)} repeats a seed.")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` → (1, 2, 3), with an error that says what is wrong."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: use comma-separated integers, e.g. 1,2,3.") from None


def overrides(seed: int, scope: str = "rl") -> list[str]:
    """``dvc exp run -S`` assignments that set the seed of the ``scope``'s stages to ``seed``; ``++``
    (Hydra: add or override) also works for a params.yaml that leaves ``seed`` at its default."""
    return [f"++{stage}.seed={seed}" for stage in SCOPES[scope]]


def headline(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The HEADLINE figures of one run from its per-stage metrics ({stage: {key: value}}), then
    its over-refusal per benign source (``source_rows``)."""
    fixed = {label: float(metrics.get(stage, {}).get(key, math.nan)) for stage, key, label in HEADLINE}
    return {**fixed, **source_rows(metrics.get("evaluate", {}))}


def source_rows(evaluate: Mapping[str, float]) -> dict[str, float]:
    """``"CRAFT over-refusal (aplomb)"`` → value, for every ``<model>/over_refusal_<source>`` key of
    evaluate's metrics (models: ``SOURCE_MODELS``; the keys' ``_lo``/``_hi``/``_n`` companions and
    the overall ``over_refusal`` are not sources)."""
    out = {}
    for key, value in evaluate.items():
        m = _SOURCE_KEY.match(key)
        if m and not key.endswith(_BOUNDS):
            out[f"{SOURCE_MODELS[m[1]]} over-refusal ({m[2]})"] = float(value)
    return out


def row_labels(runs: Mapping[str, Mapping[str, float]]) -> list[str]:
    """HEADLINE's labels, then the per-source rows any run has, by model (base, text-only, CRAFT)
    and source name."""
    order = list(SOURCE_MODELS.values())
    extra = {label for run in runs.values() for label in run if _SOURCE_LABEL.match(label)}
    ranked = sorted(extra, key=lambda label: (order.index(_SOURCE_LABEL.match(label)[1]), label))
    return [label for _, _, label in HEADLINE] + ranked


def spread(runs: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Per metric (``row_labels``): each run's value, then n, mean, sd, min, max and a 95% t
    interval of the mean (``ci_lo``, ``ci_hi``; NaN below two runs; a rate's clipped to [0, 1])
    over the runs that have it."""
    rows = []
    for label in row_labels(runs):
        values = {name: run[label] for name, run in runs.items() if not math.isnan(run.get(label, math.nan))}
        xs = list(values.values())
        n = len(xs)
        sd = statistics.stdev(xs) if n > 1 else (0.0 if n else math.nan)  # sample sd (n − 1)
        ci = across_seeds(xs)
        lo, hi = (max(ci.lo, 0.0), min(ci.hi, 1.0)) if is_rate(label) and n > 1 else (ci.lo, ci.hi)
        rows.append({"metric": label, **values, "n": n, "mean": statistics.fmean(xs) if n else math.nan, "sd": sd,
                     "min": min(xs, default=math.nan), "max": max(xs, default=math.nan),
                     "ci_lo": lo, "ci_hi": hi})
    return rows


def is_rate(label: str) -> bool:
    """Whether the figure labelled ``label`` is a rate in [0, 1] (printed as a percentage): a
    HEADLINE figure by its metric key's ending (``RATE_SUFFIXES``), not by the label's words; every
    per-source over-refusal row is one."""
    return label in RATE_LABELS or bool(_SOURCE_LABEL.match(label))


def _fmt(label: str, v: float) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.1%}" if is_rate(label) else f"{v:.3f}"


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
