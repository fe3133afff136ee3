"""Regenerate the benchmark table in docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/report.py        # (make bench runs the CPU benchmarks first)
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def fmt(v) -> str:
    return f"{v:,.2f}" if isinstance(v, float) else str(v)


def table() -> str:
    out = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        r = json.loads(path.read_text())
        rows = r["rows"]
        keys = list(rows[0])
        out.append(f"**{r['benchmark']}** — {r['device']}, {r['date']}, `{r.get('command', '')}`\n")
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        out += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    readme = ROOT / "docs" / "benchmarks.md"
    text = readme.read_text()
    if START not in text:
        raise SystemExit(f"docs/benchmarks.md has no {START} … {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    print("docs/benchmarks.md benchmark table updated")


if __name__ == "__main__":
    main()
