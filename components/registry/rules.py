"""The promotion gate's rules: which evaluation metrics the registry keeps, and the checks a
challenger must pass against the champion (or, with none, the base model of its own evaluation).

The gate uses the evidence the evaluation reports, not bare point estimates:
- Comparable only on the same prompts: a challenger and a champion whose ``eval.prompt_set``
  digests differ (or are missing) are not compared at all; the promotion is refused.
- Each gated rate (response ASR, every attack's response ASR on both sides, over-refusal,
  degenerate rate; higher is worse for all) is compared by the difference D = challenger −
  reference with a 95% Newcombe hybrid score interval (Newcombe 1998, method 10; counts
  k = round(rate·n) from ``<rate>`` and ``<rate>_n``). Interval above 0: "worse"; containing 0:
  "no evidence of change"; below 0: "better". A check fails when the interval lies entirely
  above its margin (``max_response_asr_increase`` for response ASRs, 0 otherwise).
  Refusal rate is 1 − response ASR − degenerate rate on the same prompts, so it is not gated.
- Departure: both models answered the same prompts, so outcomes are paired; the registry keeps
  rates, not per-prompt outcomes, so the interval is the one for independent samples. For
  positively correlated outcomes it is wider than a paired one: it errs towards "no evidence".
- Absolute rules stay point rules: over-refusal ≤ ``max_over_refusal`` and utility NLL ≤ the
  reference's + ``max_utility_nll_increase``. With no champion the reference is the base model
  of the same evaluation (``eval.base.*``). A missing metric fails its check.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from components.eval.stats import newcombe_diff, wilson

if TYPE_CHECKING:
    from components.registry.promote import PromoteConfig

PROMPT_SET = "prompt_set"
"""``eval.prompt_set``: digest of the exact evaluation prompt set (prompt ids, attack templates)
and its protocol (judge, token budget, engine, batching: ``components.evaluate.eval_set``)."""
RATES = ("response_asr", "reasoning_asr", "refusal_rate", "over_refusal", "degenerate_rate")
"""Per-model rates of the evaluation; each also has ``_lo``, ``_hi`` (Wilson 95%) and ``_n``."""
ATTACK_ASR = "_response_asr"
"""``<attack>_response_asr``: response ASR under one jailbreak wrapper (with ``_lo``, ``_hi``, ``_n``)."""
INTERVAL_PARTS = ("_lo", "_hi", "_n")
UTILITY = "utility_nll"
GATED = ("response_asr", "over_refusal", "degenerate_rate")
"""Rates compared by interval (the attack ASRs present on both sides are gated too)."""
MAX_TAG = 5000
"""MLflow's limit on a tag value, in characters."""
WORSE, NO_CHANGE, BETTER = "worse", "no evidence of change", "better"
WITHIN, OVER, MISSING, DIFFERENT = "within limit", "over limit", "missing", "different prompt sets"
_LABELS = {"response_asr": "response ASR", "over_refusal": "over-refusal", "degenerate_rate": "degenerate rate"}
NAN = float("nan")


def is_eval_key(key: str) -> bool:
    """Whether the registry keeps ``key``: a rate, an attack's response ASR (either with ``_lo``,
    ``_hi`` or ``_n``) or the utility NLL."""
    if key == UTILITY:
        return True
    stem = next((key[: -len(p)] for p in INTERVAL_PARTS if key.endswith(p)), key)
    return stem in RATES or is_attack(stem)


def is_attack(key: str) -> bool:
    """``<attack>_response_asr`` itself (not its bounds)."""
    return key.endswith(ATTACK_ASR) and len(key) > len(ATTACK_ASR)


def _check(rule: str, metric: str, challenger, reference, diff: float = NAN, lo: float = NAN, hi: float = NAN,
           verdict: str = MISSING, passed: bool = False) -> dict:
    """One gate check: ``diff`` = challenger − reference, ``[lo, hi]`` its 95% interval (NaN where none)."""
    return {"rule": rule, "metric": metric, "challenger": challenger, "reference": reference, "diff": diff,
            "lo": lo, "hi": hi, "verdict": verdict, "passed": passed}


def _counts(metrics: dict, key: str) -> tuple[int, int] | None:
    """(k, n) of a rate from ``<key>`` and ``<key>_n``; None when either is missing or n = 0."""
    value, n = metrics.get(key, NAN), metrics.get(f"{key}_n", NAN)
    if value != value or n != n or n < 1:
        return None
    n = int(round(n))
    return min(n, max(0, int(round(value * n)))), n


def _compare(metric: str, chal: dict, ref: dict, ref_name: str, margin: float) -> dict:
    """Challenger − reference for a rate where higher is worse, with Newcombe's interval."""
    label = _LABELS.get(metric) or f"{metric[: -len(ATTACK_ASR)]} response ASR"
    rule = f"{label}: 95% interval of challenger − {ref_name} not above {margin:g}"
    a, b = _counts(chal, metric), _counts(ref, metric)
    if a is None or b is None:
        return _check(rule, metric, chal.get(metric, NAN), ref.get(metric, NAN))
    diff, lo, hi = newcombe_diff(*a, *b)
    verdict = WORSE if lo > 0 else BETTER if hi < 0 else NO_CHANGE
    return _check(rule, metric, chal[metric], ref[metric], diff, lo, hi, verdict, passed=bool(lo <= margin))


def _over_refusal_bound(chal: dict, cfg: PromoteConfig) -> dict:
    """Absolute point rule; the interval (challenger's Wilson bounds − limit) shows the margin."""
    value, limit = chal.get("over_refusal", NAN), cfg.max_over_refusal
    counts = _counts(chal, "over_refusal")
    r = wilson(*counts) if counts else None
    passed = bool(value == value and value <= limit)  # NaN fails
    return _check(f"over-refusal ≤ {limit:g}", "over_refusal", value, limit, value - limit,
                  r.lo - limit if r else NAN, r.hi - limit if r else NAN,
                  (WITHIN if passed else OVER) if value == value else MISSING, passed)


def _utility(chal: dict, ref: dict, ref_name: str, cfg: PromoteConfig) -> dict:
    value, reference = chal.get(UTILITY, NAN), ref.get(UTILITY, NAN)
    diff = value - reference
    passed = bool(diff == diff and diff <= cfg.max_utility_nll_increase)  # NaN fails
    return _check(f"utility NLL ≤ {ref_name}'s + {cfg.max_utility_nll_increase:g}", UTILITY, value, reference,
                  diff, verdict=(WITHIN if passed else OVER) if diff == diff else MISSING, passed=passed)


def _same_prompts(chal: dict, champ: dict) -> dict:
    a, b = str(chal.get(PROMPT_SET) or ""), str(champ.get(PROMPT_SET) or "")
    same = bool(a) and a == b
    return _check("challenger and champion evaluated on the same prompt set", PROMPT_SET, a, b,
                  verdict="same prompt set" if same else DIFFERENT if a and b else MISSING, passed=same)


def gate(challenger: dict, champion: dict | None, cfg: PromoteConfig) -> list[dict]:
    """The gate's checks (see the module docstring); each: rule, metric, challenger, reference,
    diff, lo, hi, verdict, passed. A champion evaluated on other prompts gives one failed check."""
    if champion is not None:
        prompts = _same_prompts(challenger, champion)
        if not prompts["passed"]:
            return [prompts]  # not comparable: compare nothing
        ref, ref_name = champion, "champion"
    else:
        ref, ref_name = {k[len("base."):]: v for k, v in challenger.items() if k.startswith("base.")}, "base"
    attacks = sorted(k for k in challenger if "." not in k and is_attack(k) and k in ref)  # not base.<attack>
    margin = lambda m: cfg.max_response_asr_increase if m.endswith("response_asr") else 0.0  # noqa: E731
    checks = [_compare(m, challenger, ref, ref_name, margin(m)) for m in ("response_asr", *attacks, *GATED[1:])]
    checks += [_over_refusal_bound(challenger, cfg), _utility(challenger, ref, ref_name, cfg)]
    return checks + ([prompts] if champion is not None else [])


def _fmt(v, signed: bool = False) -> str:
    if isinstance(v, str):
        return v[:12] or "—"
    return "—" if v != v else f"{v:+.4f}" if signed else f"{v:.4f}"


def _interval(lo: float, hi: float, fmt: str = "+.4f") -> str:
    return "—" if lo != lo or hi != hi else f"[{lo:{fmt}}, {hi:{fmt}}]"


def gate_table(checks: list[dict]) -> str:
    """Markdown: one row per check, the difference with its 95% interval and the verdict in words."""
    rows = [f"| {'✔' if c['passed'] else '✘'} | {c['rule']} | {_fmt(c['challenger'])} | {_fmt(c['reference'])} | "
            f"{_fmt(c['diff'], signed=True)} | {_interval(c['lo'], c['hi'])} | {c['verdict']} |" for c in checks]
    return ("| | rule | challenger | reference | diff | 95% interval | verdict |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def _gate_tag(checks: list[dict]) -> str:
    """``promotion.gate``: the checks as JSON (NaN as null) within MLflow's tag limit."""
    clean = [{k: (None if v != v else round(v, 6)) if isinstance(v, float) else v for k, v in c.items()}
             for c in checks]
    text = json.dumps(clean, ensure_ascii=False)
    if len(text) > MAX_TAG:  # the rule text is derivable from metric and config: drop it first
        text = json.dumps([{k: v for k, v in c.items() if k != "rule"} for c in clean], ensure_ascii=False)
    return text
