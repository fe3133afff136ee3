"""Stage ``validate``: the pair dataset must pass every GX check before any training runs.

``craft validate PATH`` runs the same checks on any file in the pair-dataset schema (Parquet,
JSONL, JSON array, CSV) and writes the same report. Columns are read with the schema's types
whatever the format (``records.TRACE_TYPES``: CSV text is parsed, so a CSV ``p_safe`` is a
number). The GX result JSON is kept as the record (Data Docs need CDNs, so we render our own
markdown and HTML summary), cut to ``expectations.MAX_EXAMPLES`` values per list and
``expectations.MAX_CHARS`` characters per string, so a huge cell cannot blow the record up. A check
that crashed inside GX is reported as crashed, with its message. A path that does not exist is a
user error (one line, exit 2) and nothing is written.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from components.core import datasets, stage_cli
from components.core import tracking
from components.core.config import require, stage_config
from components.data.expectations import Finding, validate_frame
from components.core.io import DataFileError, read_table, write_json, write_text
from components.data.records import LABELS, TRACE_TYPES

log = logging.getLogger("craft.validate")
STAGE = "validate"


@dataclass(frozen=True)
class ValidateConfig:
    """params.yaml:validate — the data contract of the pair dataset."""

    min_rows: int = 20
    """Fewest rows the pair dataset may hold; >= 1."""
    min_trace_chars: int = 1
    """Shortest allowed trace, in characters; >= 0."""
    max_trace_chars: int = 20000
    """Longest allowed trace, in characters; > min_trace_chars."""
    min_prompt_chars: int = 4
    """Shortest allowed prompt, in characters; >= 0."""
    max_prompt_chars: int = 4000
    """Longest allowed prompt, in characters; > min_prompt_chars."""
    min_class_fraction: float = 0.05
    """Each present label must hold at least this share of rows; in [0, 0.5)."""
    required_labels: tuple[str, ...] = ("safe", "unsafe")
    """Labels that must appear at all (contrastive training needs both sides); from safe, unsafe, rethink."""

    def __post_init__(self) -> None:
        require(self.min_rows >= 1, f"validate.min_rows={self.min_rows!r}: use 1 or more, e.g. 20.")
        require(self.min_trace_chars >= 0, f"validate.min_trace_chars={self.min_trace_chars!r}: use 0 or more, e.g. 1.")
        require(self.min_trace_chars < self.max_trace_chars,
                f"validate.max_trace_chars={self.max_trace_chars!r} is not above min_trace_chars="
                f"{self.min_trace_chars!r}: raise max_trace_chars (e.g. 20000) or lower min_trace_chars.")
        require(self.min_prompt_chars >= 0,
                f"validate.min_prompt_chars={self.min_prompt_chars!r}: use 0 or more, e.g. 4.")
        require(self.min_prompt_chars < self.max_prompt_chars,
                f"validate.max_prompt_chars={self.max_prompt_chars!r} is not above min_prompt_chars="
                f"{self.min_prompt_chars!r}: raise max_prompt_chars (e.g. 4000) or lower min_prompt_chars.")
        require(0 <= self.min_class_fraction < 0.5,
                f"validate.min_class_fraction={self.min_class_fraction!r}: use a share in [0, 0.5), e.g. 0.05.")
        require(set(self.required_labels) <= set(LABELS),
                f"validate.required_labels={list(self.required_labels)!r}: choose from {LABELS}.")


@dataclass
class Report:
    path: str
    rows: int
    findings: list[Finding]
    raw: dict

    @property
    def success(self) -> bool:
        return all(f.success for f in self.findings)

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if not f.success]

    def metrics(self) -> dict:
        return {"success": self.success, "rows": self.rows, "checks": len(self.findings),
                "failed_checks": len(self.failed)}


def require_file(path: str | Path) -> Path:
    """``path`` if it exists, else a ``DataFileError`` (checked before anything is written)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found; give the path of a pair-dataset file "
                            "(.parquet, .jsonl, .json or .csv).")
    return path


def run(path: str | Path, cfg: ValidateConfig) -> Report:
    """Validate one file; an unreadable file is a failed report, a missing one a ``DataFileError``."""
    require_file(path)
    try:
        df = read_table(path, TRACE_TYPES)
    except DataFileError as exc:
        finding = Finding("file", "file is a readable table", "(file)", False, 0, (str(exc),),
                          "write the file as Parquet or UTF-8 JSONL/CSV")
        return Report(str(path), 0, [finding], {})
    outcome = validate_frame(df, dataclasses.asdict(cfg))
    return Report(str(path), len(df), outcome.findings, outcome.raw)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    verdict = "PASSED" if report.success else f"FAILED ({len(report.failed)} of {len(report.findings)} checks)"
    lines = [f"# Pair dataset validation: {verdict}", "", f"File: `{report.path}` · rows: {report.rows}", ""]
    if report.failed:
        lines += ["## Problems", "", "| check | column | rows | examples | how to fix |", "|---|---|---|---|---|"]
        for f in report.failed:
            ex = "; ".join(_cell(e) for e in f.examples) or "—"
            if f.crashed:
                lines.append(f"| {_cell(f.check)} | {f.column} | crashed | check crashed: {_cell(f.error)} | "
                             f"{f.hint} |")
                continue
            lines.append(f"| {_cell(f.check)} | {f.column} | {f.unexpected} | {ex} | {f.hint} |")
        lines.append("")
    passed = [f for f in report.findings if f.success]
    if passed:
        lines += ["## Passed", ""] + [f"- {f.check}" for f in passed] + [""]
    return "\n".join(lines)


def to_html(report: Report) -> str:
    """A self-contained page (no CDN assets) of the same content."""
    rows = "".join(
        f"<tr class='{'ok' if f.success else 'bad'}'><td>{'✔' if f.success else '✘'}</td><td>{html.escape(f.check)}</td>"
        f"<td>{html.escape(f.column)}</td><td>{'crashed' if f.crashed else f.unexpected}</td>"
        f"<td>{html.escape('check crashed: ' + f.error if f.crashed else '; '.join(f.examples))}</td>"
        f"<td>{html.escape(f.hint if not f.success else '')}</td></tr>"
        for f in report.findings)
    verdict = "PASSED" if report.success else "FAILED"
    return ("<!doctype html><meta charset='utf-8'><title>Pair dataset validation</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top}table{border-collapse:collapse}.bad{background:#fde8e8}.ok{background:#eefbee}</style>"
            f"<h1>Pair dataset validation: {verdict}</h1><p>File: <code>{html.escape(report.path)}</code>, "
            f"rows: {report.rows}</p><table><tr><th></th><th>check</th><th>column</th><th>rows</th>"
            f"<th>examples</th><th>how to fix</th></tr>{rows}</table>")


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """report.md, report.html, result.json (GX record) and metrics.json under ``out``."""
    out = Path(out)
    return {
        "markdown": write_text(out / "report.md", to_markdown(report)),
        "html": write_text(out / "report.html", to_html(report)),
        "result": write_json(out / "result.json", {"path": report.path, "success": report.success,
                                                    "findings": [dataclasses.asdict(f) for f in report.findings],
                                                    "gx": report.raw}),
        "metrics": write_json(out / "metrics.json", report.metrics()),
    }


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--data", True, "pair dataset (data/curate/traces.parquet)"),
        ("--out", True, "report folder (data/validate)"),
    ])
    cfg = stage_config(ValidateConfig, STAGE, params)
    require_file(args.data)
    with tracking.stage_run(STAGE, cfg):
        report = run(args.data, cfg)
        if report.rows:  # a readable file: record what was checked, split by split
            datasets.log_splits(read_table(args.data, TRACE_TYPES), args.data, "traces")
        files = write_report(report, args.out)
        tracking.log_stage_outputs(STAGE, report.metrics(), files.values())
    if not report.success:
        print(to_markdown(report), file=sys.stderr)
        log.error("pair dataset failed validation: %d problem(s); see %s", len(report.failed), files["markdown"])
        return 1
    log.info("pair dataset passed %d checks", len(report.findings))
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
