"""Whether a reward orders a group's samples the way a reference verdict does (docs/stage2.md round 34).

GRPO-family RL learns only from how a reward ranks the G samples of one prompt's group
(Dr. GRPO: A_i = r_i − mean_group(r)). What a reward tells the policy about a target measure is
therefore its within-group pairwise accuracy:

    acc(r) = Σ_groups Σ_{i right, j wrong} [r_i > r_j] + ½·[r_i = r_j]  /  #pairs

over every pair in one group whose target verdicts differ (one sample right, one wrong). Pairs
with the same verdict carry no information about the measure and are not counted. Two rewards are
compared on the same pairs; the 95% interval of a difference is a percentile bootstrap over units
(a prompt, all its groups kept together), resampled within strata (the prompt's kind), so a
prompt that yields many pairs weighs as it did in the estimate.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def ordered_pairs(frame: pd.DataFrame, scores: Sequence[str], groups: Sequence[str],
                  right: str = "right") -> pd.DataFrame:
    """One row per group (``groups`` columns): ``pairs``, the number of (right, wrong) pairs, and for
    each score column the pairs it orders right (ties count ½)."""
    rows = []
    for key, g in frame.groupby(list(groups), sort=True):
        ok = g[right].to_numpy(bool)
        row = dict(zip(groups, key if isinstance(key, tuple) else (key,)))
        row["pairs"] = int(ok.sum() * (~ok).sum())
        for s in scores:
            diff = pair_diffs(g, s, right)
            row[s] = float((diff > 0).sum() + 0.5 * (diff == 0).sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=[*groups, "pairs", *scores])


def pair_diffs(group: pd.DataFrame, score: str, right: str = "right") -> np.ndarray:
    """[n_right, n_wrong]: score of each right sample minus score of each wrong one, in one group."""
    ok = group[right].to_numpy(bool)
    v = group[score].to_numpy(float)
    return v[ok][:, None] - v[~ok][None, :]


def accuracy(per: pd.DataFrame, score: str, versus: str | None = None) -> float:
    """acc(score), or acc(score) − acc(versus) on the same pairs; nan when there is no pair."""
    n = per["pairs"].sum()
    if n == 0:
        return float("nan")
    out = per[score].sum() / n
    return float(out - per[versus].sum() / n) if versus else float(out)


def bootstrap(per: pd.DataFrame, score: str, versus: str | None = None, unit: Sequence[str] = ("prompt",),
              strata: str | None = None, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5th, 97.5th percentile) of ``accuracy(score, versus)``, resampling ``unit``s
    with replacement within each ``strata`` value (a unit with no pair still counts as drawn; a
    resample without any pair has no accuracy and is left out). nan without pairs."""
    keys = [*unit, *([strata] if strata and strata not in unit else [])]
    units = per.groupby(keys, sort=True)[["pairs", score, *([versus] if versus else [])]].sum().reset_index()
    est = accuracy(units, score, versus)
    layers = [units] if strata is None else [u for _, u in units.groupby(strata, sort=True)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        sample = pd.concat([u.iloc[rng.integers(0, len(u), len(u))] for u in layers])
        draws.append(accuracy(sample, score, versus))
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return est, float("nan"), float("nan")
    return est, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))
