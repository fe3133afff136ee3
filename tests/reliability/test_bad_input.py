"""Malformed pair and prompt files: always a clear error, never a crash trace, never partial output."""
from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.data.records import TRACE_COLUMNS
from flows.cli import main as craft

pytestmark = pytest.mark.reliability
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=50), st.text(alphabet="\u202e\u200b\ufeff\U0001f600\x00é", max_size=20))


@SETTINGS
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".jsonl", ".csv", ".parquet", ".json"]))
def test_validate_arbitrary_bytes(tmp_path_factory, capsys, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"pairs{suffix}"
    path.write_bytes(data)
    code = craft(["validate", str(path), "--out", str(path.parent / "report")])
    out = capsys.readouterr()
    assert code in (1, 2) and "Traceback" not in out.err
    if code == 1:
        assert "FAILED" in out.out and (path.parent / "report" / "report.md").exists()


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(list(TRACE_COLUMNS) + ["extra"]), scalars, max_size=16),
                     min_size=1, max_size=8))
def test_validate_wrong_types_and_missing_columns(tmp_path_factory, capsys, rows):
    path = tmp_path_factory.mktemp("rows") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    code = craft(["validate", str(path), "--out", str(path.parent / "report")])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err  # such tiny files can never pass (min_rows)
    assert "## Problems" in (path.parent / "report" / "report.md").read_text()


def test_huge_strings_are_reported_not_crashed(tmp_path, capsys):
    from tests.factories import good_frame

    df = good_frame()
    df.loc[0, "trace"] = "x" * 2_000_000
    path = tmp_path / "big.parquet"
    df.to_parquet(path)
    assert craft(["validate", str(path), "--out", str(tmp_path / "r")]) == 1
    assert "`trace` length" in capsys.readouterr().out


prompt_rows = st.lists(st.fixed_dictionaries({"prompt": scalars, "prompt_kind": st.sampled_from(
    ["harmful", "benign", "Harmful", ""])}), max_size=6).map(lambda rows: "\n".join(map(json.dumps, rows)))


@SETTINGS
@given(content=st.one_of(st.binary(max_size=500), st.text(alphabet=string.printable, max_size=300), prompt_rows))
def test_ingest_user_file_errors_cleanly_and_writes_nothing(tmp_path_factory, capsys, content):
    from components.ingest import main as ingest_main

    from components.core.errors import guarded

    ws = tmp_path_factory.mktemp("ingest")
    src = ws / "mine.jsonl"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    (ws / "params.yaml").write_text(f"ingest: {{sources: ['file:{src}']}}\n")
    out = ws / "data" / "ingest"
    code = guarded("ingest", lambda: ingest_main(["--params", str(ws / "params.yaml"), "--out", str(out)]))
    err = capsys.readouterr().err
    if code != 0:
        assert code == 2 and "ingest: error:" in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())  # nothing partial left behind
        return
    # It succeeded: a complete, valid prompt table of the file's usable prompts, and its stats.
    import pandas as pd

    from components.data.records import PROMPT_COLUMNS, PROMPT_KINDS, SPLITS, normalise
    from components.ingest import IngestConfig

    assert "error" not in err and "Traceback" not in err
    assert {f.name for f in out.iterdir()} >= {"prompts.parquet", "metrics.json", "summary.md"}
    df = pd.read_parquet(out / "prompts.parquet")
    stats = json.loads((out / "metrics.json").read_text())
    cfg = IngestConfig()
    assert tuple(df.columns) == PROMPT_COLUMNS and stats["kept"] == len(df) <= stats["read"]
    assert df.prompt.map(lambda t: cfg.min_chars <= len(t) <= cfg.max_chars).all()
    assert df.prompt.map(normalise).is_unique and df.prompt_id.is_unique
    assert df.prompt_kind.isin(PROMPT_KINDS).all() and df.split.isin(SPLITS).all()
    assert (df.source == src.stem).all()
