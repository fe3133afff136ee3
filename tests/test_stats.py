"""Interval and test arithmetic against hand-computed values."""
import math

import pytest

from components.eval import stats


def test_wilson_matches_hand_computation():
    # k=8, n=24: p=1/3, z²=3.8415; denom=1.16006; centre=(0.33333+0.08003)/1.16006=0.35633;
    # half=1.95996*sqrt(0.0092593+0.0016674)/1.16006=0.17657 → [0.17976, 0.53290]
    r = stats.wilson(8, 24)
    assert r.lo == pytest.approx(0.17976, abs=1e-4) and r.hi == pytest.approx(0.53290, abs=1e-4)
    zero = stats.wilson(0, 100)  # upper bound z²/(n+z²) = 3.8415/103.8415
    assert zero.lo == pytest.approx(0.0, abs=1e-12) and zero.hi == pytest.approx(3.8415 / 103.8415, abs=1e-4)
    assert stats.wilson(100, 100).hi == 1.0
    assert math.isnan(stats.wilson(0, 0).value)
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_mcnemar_exact_matches_binomial_tail():
    # 10 discordant pairs, split 9/1: p = 2·(C(10,0)+C(10,1))/2^10 = 2·11/1024
    a = [True] * 9 + [False] * 1 + [True] * 5 + [False] * 5
    b = [False] * 9 + [True] * 1 + [True] * 5 + [False] * 5
    assert stats.mcnemar_exact(a, b) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(a, a) == 1.0
    assert stats.binom_two_sided(3, 6) == 1.0  # balanced: capped at 1
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True], [True, False])


def test_cohen_kappa_and_per_class():
    truth = ["r", "r", "c", "c", "d", "d"]
    pred = ["r", "c", "c", "c", "d", "r"]
    # p_o = 4/6; p_e = (2·2 + 2·3 + 2·1)/36 = 12/36 → κ = (4/6 − 1/3)/(2/3) = 0.5
    assert stats.cohen_kappa(truth, pred) == pytest.approx(0.5)
    assert stats.cohen_kappa(truth, truth) == 1.0
    pc = stats.per_class(truth, pred, ["r", "c", "d"])
    assert pc["c"] == {"precision": 2 / 3, "recall": 1.0, "support": 2}
    assert pc["d"]["precision"] == 1.0 and pc["d"]["recall"] == 0.5


def test_across_seeds_t_interval():
    s = stats.across_seeds([0.2, 0.4, 0.6])
    # mean 0.4, sd 0.2, t_{0.975,2} = 4.303 → half = 4.303·0.2/√3 = 0.49687
    assert (s.mean, s.sd) == pytest.approx((0.4, 0.2))
    assert s.lo == pytest.approx(0.4 - 0.49687, abs=1e-4) and s.hi == pytest.approx(0.4 + 0.49687, abs=1e-4)
    assert math.isnan(stats.across_seeds([0.5]).sd)


def test_newcombe_diff_matches_hand_computation_and_paper():
    # 56/70 − 48/80 (Newcombe 1998, Table II, example a; method 10 gives +0.0524 to +0.3339):
    # Wilson(56, 70) = [0.69183, 0.87695], Wilson(48, 80) = [0.49045, 0.70038], D = 0.8 − 0.6 = 0.2;
    # lo = 0.2 − sqrt((0.8 − 0.69183)² + (0.70038 − 0.6)²) = 0.2 − sqrt(0.011700 + 0.010077) = 0.05243
    # hi = 0.2 + sqrt((0.87695 − 0.8)² + (0.6 − 0.49045)²) = 0.2 + sqrt(0.005922 + 0.012001) = 0.33387
    d, lo, hi = stats.newcombe_diff(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    # example c, a zero count: 5/56 − 0/29 → −0.0381 to +0.1926 (hi = u₁ − p̂₂ exactly since l₂ = p̂₂ = 0)
    d, lo, hi = stats.newcombe_diff(5, 56, 0, 29)
    assert lo == pytest.approx(-0.0381, abs=1e-4) and hi == pytest.approx(stats.wilson(5, 56).hi, abs=1e-12)
    # the promotion gate's cases: 40/150 vs 10/150 lies above 0, 12/150 vs 10/150 straddles it
    assert stats.newcombe_diff(40, 150, 10, 150)[1] > 0
    _, lo, hi = stats.newcombe_diff(12, 150, 10, 150)
    assert lo < 0 < hi
    assert all(math.isnan(x) for x in stats.newcombe_diff(1, 0, 1, 2))
