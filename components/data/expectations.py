"""Great Expectations 1.x suites for the pair dataset, and their results as readable findings.

Four frames are checked, each by its own suite:
- ``rows``: the dataset as given (schema, types, nulls, ids, label/kind/origin/split sets, lengths);
- ``prompt_splits``: one row per (normalised prompt, split) — a prompt in two splits is leakage;
- ``trace_labels``: one row per (prompt_id, normalised trace, label) — the same trace under two
  labels of one prompt is a safe == unsafe pair;
- ``label_balance``: one row per label with its share of rows (class balance).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from components.data.records import LABELS, ORIGINS, PROMPT_KINDS, SPLITS, STRING_COLUMNS, TRACE_COLUMNS, normalise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One expectation's outcome in words a data steward can act on."""

    suite: str
    check: str
    column: str
    success: bool
    unexpected: int
    examples: tuple[str, ...]
    hint: str
    error: str = ""
    """The exception message when the check crashed inside GX (then ``unexpected`` means nothing)."""

    @property
    def crashed(self) -> bool:
        return bool(self.error)


@dataclass
class SuiteOutcome:
    findings: list[Finding] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(f.success for f in self.findings)


def _e():
    import great_expectations.expectations as gxe

    return gxe


def row_expectations(df: pd.DataFrame, limits: dict) -> list[tuple[Any, str, str]]:
    """(expectation, check title, how to fix) for the rows frame."""
    gxe = _e()
    present = [c for c in TRACE_COLUMNS if c in df.columns]
    out: list[tuple[Any, str, str]] = [
        (gxe.ExpectColumnToExist(column=c), f"column `{c}` exists", "add the column (see README schema)")
        for c in TRACE_COLUMNS
    ]
    out.append((gxe.ExpectTableRowCountToBeBetween(min_value=limits["min_rows"]),
                f"at least {limits['min_rows']} rows", "curate more prompts"))
    for c in present:
        out.append((gxe.ExpectColumnValuesToNotBeNull(column=c), f"`{c}` has no nulls", "fill or drop the rows"))
    for c in [c for c in STRING_COLUMNS if c in present]:
        out.append((gxe.ExpectColumnValuesToBeOfType(column=c, type_="str"), f"`{c}` is text",
                    "store the column as strings"))
    if "trace_id" in present:
        out.append((gxe.ExpectColumnValuesToBeUnique(column="trace_id"), "`trace_id` is unique",
                    "give every row its own id"))
    for c, allowed in (("label", LABELS), ("prompt_kind", PROMPT_KINDS), ("origin", ORIGINS), ("split", SPLITS)):
        if c in present:
            out.append((gxe.ExpectColumnValuesToBeInSet(column=c, value_set=list(allowed)),
                        f"`{c}` in {{{', '.join(allowed)}}}", f"use only {', '.join(allowed)}"))
    for c, lo, hi in (("trace", limits["min_trace_chars"], limits["max_trace_chars"]),
                      ("prompt", limits["min_prompt_chars"], limits["max_prompt_chars"])):
        if c in present:
            out.append((gxe.ExpectColumnValueLengthsToBeBetween(column=c, min_value=lo, max_value=hi),
                        f"`{c}` length in [{lo}, {hi}]", "trim or drop out-of-bound rows"))
    if "p_safe" in present:
        out.append((gxe.ExpectColumnValuesToBeInTypeList(column="p_safe", type_list=list(NUMBER_TYPES)),
                    "`p_safe` is a number", "store p_safe as a number in [0, 1]"))
        out.append((gxe.ExpectColumnValuesToBeBetween(column="p_safe", min_value=0.0, max_value=1.0),
                    "`p_safe` in [0, 1]", "judges must return a probability of safety"))
    if "label" in present:
        out.append((gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(limits["required_labels"])),
                    f"labels {list(limits['required_labels'])} all present", "curate traces of every label"))
    return out


def _text(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str)


def derived_frames(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The frames whose row-level checks express leakage, conflicting labels and balance."""
    needed = {"prompt", "split", "prompt_id", "trace", "label"}
    if not needed <= set(df.columns) or df.empty:
        return {}
    norm_prompt = _text(df["prompt"]).map(normalise)
    splits = pd.DataFrame({"prompt": norm_prompt, "split": _text(df["split"])}).drop_duplicates()
    labels = pd.DataFrame({"prompt_id": _text(df["prompt_id"]),
                           "trace": _text(df["trace"]).map(normalise),
                           "label": _text(df["label"])}).drop_duplicates()
    share = _text(df["label"]).value_counts(normalize=True)
    balance = pd.DataFrame({"label": share.index.astype(str), "share": share.values.astype(float)})
    return {"prompt_splits": splits.reset_index(drop=True), "trace_labels": labels.reset_index(drop=True),
            "label_balance": balance}


def derived_expectations(limits: dict) -> dict[str, list[tuple[Any, str, str]]]:
    gxe = _e()
    return {
        "prompt_splits": [(gxe.ExpectColumnValuesToBeUnique(column="prompt"),
                           "no prompt in two splits", "move each prompt's rows into one split")],
        "trace_labels": [(gxe.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "trace"]),
                          "no trace carries two labels for one prompt (safe == unsafe)",
                          "drop the copy or fix its label")],
        "label_balance": [(gxe.ExpectColumnValuesToBeBetween(column="share", min_value=limits["min_class_fraction"], max_value=1.0),
                           f"every label holds ≥ {limits['min_class_fraction']:.0%} of rows",
                           "add traces of the rare label or lower validate.min_class_fraction")],
    }


MAX_EXAMPLES = 20
"""Most values kept per list in the stored GX record (result.json)."""
MAX_CHARS = 200
"""Longest string kept in the stored GX record; longer ones are cut and say how long they were."""
NUMBER_TYPES = ("float", "float64", "float32", "int", "int64", "int32")
"""Type names ``ExpectColumnValuesToBeInTypeList`` accepts for a numeric column."""


def crash_message(exception_info: Any) -> str:
    """The message of an expectation that crashed inside GX, else ``""``.

    GX 1.x gives ``exception_info`` two shapes: ``{raised_exception, exception_message,
    exception_traceback}`` when the expectation ran, and, when a metric it needs raised, a dict
    keyed by the stringified ``MetricConfigurationID`` whose values have that shape. In JSON
    (``to_json_dict``) ``raised_exception`` is the string ``"True"``/``"False"``.
    """
    if not isinstance(exception_info, dict):
        return ""
    entries = [exception_info] if "raised_exception" in exception_info else \
        [v for v in exception_info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception") in (True, "True", "true"):
            return str(entry.get("exception_message") or "the check raised an error without a message")
    return ""


def _bounded(obj: Any, max_items: int = MAX_EXAMPLES, max_chars: int = MAX_CHARS) -> Any:
    """``obj`` with every list cut to ``max_items`` and every string to ``max_chars`` (recursively)."""
    if isinstance(obj, str):
        return obj if len(obj) <= max_chars else f"{obj[:max_chars]}… [{len(obj)} chars]"
    if isinstance(obj, dict):
        out = {k: _bounded(v, max_items, max_chars) for k, v in obj.items()}
        cut = {k: len(v) for k, v in obj.items() if isinstance(v, (list, tuple)) and len(v) > max_items}
        if cut:
            out["truncated_lists"] = cut  # original lengths of the lists cut above
        return out
    if isinstance(obj, (list, tuple)):
        return [_bounded(v, max_items, max_chars) for v in list(obj)[:max_items]]
    return obj


def bounded_record(raw: dict) -> dict:
    """A GX suite result (``to_json_dict``) small enough to store: at most ``MAX_EXAMPLES`` values
    per list of each expectation's ``result``, each string at most ``MAX_CHARS``; exception
    messages and tracebacks are cut at 2,000 characters."""
    out = dict(raw)
    out["results"] = []
    for r in raw.get("results") or []:
        r = dict(r)
        r["result"] = _bounded(r.get("result") or {})
        r["exception_info"] = _bounded(r.get("exception_info") or {}, max_chars=2000)
        r["expectation_config"] = _bounded(r.get("expectation_config") or {}, max_items=50)
        out["results"].append(r)
    return out


def _examples(result: dict, frame: pd.DataFrame, suite: str) -> tuple[str, ...]:
    values = result.get("partial_unexpected_list") or []
    if not values and result.get("observed_value") is not None and suite != "rows":
        values = [result["observed_value"]]
    elif not values and isinstance(result.get("observed_value"), str):
        values = [f"observed: {result['observed_value']}"]  # e.g. the dtype of a column of the wrong type
    seen: list[str] = []
    for v in values:
        s = str(v)
        s = s if len(s) <= 100 else s[:97] + "..."
        if s not in seen:
            seen.append(s)
    if suite == "label_balance" and result.get("unexpected_index_list"):
        seen = [f"{frame.iloc[i]['label']}: {frame.iloc[i]['share']:.1%}" for i in result["unexpected_index_list"][:5]]
    return tuple(seen[:5])


def run_suite(context, name: str, frame: pd.DataFrame, specs) -> tuple[list[Finding], dict]:
    """Run one suite over ``frame``; map each result back to its title and fix hint."""
    import great_expectations as gx

    asset = context.data_sources.get("craft").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_whole")
    suite = context.suites.add(gx.ExpectationSuite(name=f"pair_dataset.{name}"))
    titles = {}
    for exp, title, hint in specs:
        exp = suite.add_expectation(exp)
        titles[exp.id] = (title, hint)
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"validate_{name}", data=batch, suite=suite))
    result = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    findings = []
    for r in result.results:
        cfg = r.expectation_config
        title, hint = titles.get(cfg.id, (cfg.type, ""))
        col = cfg.kwargs.get("column") or ",".join(cfg.kwargs.get("column_list") or []) or "(table)"
        res = r.result or {}
        error = crash_message(r.exception_info)
        if error:
            error = error if len(error) <= MAX_CHARS else error[:MAX_CHARS - 3] + "..."
            findings.append(Finding(name, title, col, False, 0, (), hint, error=error))
            continue
        findings.append(Finding(name, title, col, bool(r.success), int(res.get("unexpected_count") or 0),
                                _examples(res, frame, name), hint))
    return findings, bounded_record(result.to_json_dict())


def validate_frame(df: pd.DataFrame, limits: dict) -> SuiteOutcome:
    """Run every suite; findings are ordered by suite, failures first."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own report instead
    context.data_sources.add_pandas("craft")
    outcome = SuiteOutcome()
    findings, outcome.raw["rows"] = run_suite(context, "rows", df, row_expectations(df, limits))
    outcome.findings += findings
    frames = derived_frames(df)
    for name, specs in derived_expectations(limits).items():
        if name in frames:
            findings, outcome.raw[name] = run_suite(context, name, frames[name], specs)
            outcome.findings += findings
    outcome.findings.sort(key=lambda f: f.success)
    return outcome
