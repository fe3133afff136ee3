"""Interval estimates and paired tests for evaluation rates (pure Python, no scipy needed).

- Wilson score interval for a binomial proportion (Wilson 1927; Agresti & Coull 1998): with
  p̂ = k/n and z = 1.96,  centre = (p̂ + z²/2n) / (1 + z²/n),
  half-width = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n).  Unlike p̂ ± z·se it stays inside [0, 1]
  and is honest at k = 0 (0 of 100 refused → [0, 3.7%]).
- McNemar's exact test for paired binary outcomes (same prompts, two models): only discordant
  pairs count; under H0 b ~ Binomial(b + c, 1/2), two-sided p = min(1, 2·P(X ≤ min(b, c))).
- Cohen's κ = (p_o − p_e) / (1 − p_e) for agreement between two labellings (Cohen 1960).
- Across seeds: mean, sample sd and a t interval mean ± t_{0.975, n−1}·sd/√n.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959963984540054
ALPHA = 0.05
"""Significance level of every paired test the reports and the promotion gate use."""

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond, the values at 40, 60 and 120 (upper bounds
# for the df between them) and the normal value after 120 (t_{0.975,121} = 1.980, within 1%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Rate:
    """k successes of n with a Wilson 95% interval; ``value`` is NaN when n = 0."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        if not self.n:
            return "n/a"
        return f"{self.value:.1%} [{self.lo:.1%}, {self.hi:.1%}] (n={self.n})"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval for k of n."""
    if n <= 0:
        return Rate(0, 0, float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k, n, max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired outcomes ``a[i]``, ``b[i]`` (same items)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return binom_two_sided(only_a, only_a + only_b)


def binom_two_sided(k: int, n: int) -> float:
    """P-value of k (or more extreme) of n under Binomial(n, 1/2), two-sided (doubled tail)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def cohen_kappa(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Cohen's κ between two labellings of the same items (1 = perfect, 0 = chance)."""
    n = len(truth)
    if n == 0 or n != len(pred):
        raise ValueError("kappa needs two non-empty labellings of equal length")
    p_o = sum(t == p for t, p in zip(truth, pred)) / n
    ct, cp = Counter(truth), Counter(pred)
    p_e = sum(ct[c] * cp[c] for c in set(ct) | set(cp)) / (n * n)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def per_class(truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and support of each class (NaN where undefined)."""
    out = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, pred))
        predicted, actual = sum(p == c for p in pred), sum(t == c for t in truth)
        out[c] = {"precision": tp / predicted if predicted else float("nan"),
                  "recall": tp / actual if actual else float("nan"), "support": actual}
    return out


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample sd and 95% t interval of one figure across seeds."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


def across_seeds(values: Sequence[float]) -> SeedSummary:
    vals = [v for v in values if v == v]
    if not vals:
        nan = float("nan")
        return SeedSummary(0, nan, nan, nan, nan)
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return SeedSummary(1, mean, float("nan"), float("nan"), float("nan"))
    sd = statistics.stdev(vals)
    half = t975(len(vals) - 1) * sd / math.sqrt(len(vals))
    return SeedSummary(len(vals), mean, sd, mean - half, mean + half)


def t975(df: float) -> float:
    """Two-sided 95% Student t quantile; a fractional df (Welch) is rounded down, which widens the
    interval (the conservative side)."""
    df = max(1, int(math.floor(df)))
    return _T975[df - 1] if df <= len(_T975) else 2.042 if df <= 40 else 2.021 if df <= 60 else 2.000 if df <= 120 else Z95


def welch_diff(a: SeedSummary, b: SeedSummary) -> tuple[float, float, float]:
    """(mean_a − mean_b, lo, hi): Welch's 95% t interval for the difference of two means from their
    summaries (sd with n − 1), df by Welch–Satterthwaite. NaNs unless both have n ≥ 2."""
    nan = float("nan")
    if a.n < 2 or b.n < 2:
        return nan, nan, nan
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    diff, se = a.mean - b.mean, math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = t975(df) * se
    return diff, diff - half, diff + half


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """(p̂₁ − p̂₂, lo, hi): 95% hybrid score interval for the difference of two independent proportions.

    Newcombe (1998), method 10, built from the two Wilson intervals (l₁, u₁) and (l₂, u₂):
        lo = D − sqrt((p̂₁ − l₁)² + (u₂ − p̂₂)²),   hi = D + sqrt((u₁ − p̂₁)² + (p̂₂ − l₂)²),   D = p̂₁ − p̂₂.
    It stays inside [−1, 1] and is honest at k = 0 or k = n, where the Wald interval collapses.
    NaNs when either n is 0.
    """
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if not (a.n and b.n):
        nan = float("nan")
        return nan, nan, nan
    p1, p2 = a.value, b.value
    diff = p1 - p2
    return diff, diff - math.hypot(p1 - a.lo, b.hi - p2), diff + math.hypot(a.hi - p1, p2 - b.lo)
