"""The GX suite: a good file passes; each defect is caught and named."""
import numpy as np
import pytest

from components.validate import ValidateConfig, run, to_markdown, write_report
from tests.factories import good_frame

CFG = ValidateConfig(min_rows=10)


def _check(df, tmp_path, fmt="parquet"):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return run(path, CFG)


def _failed(report):
    return {f.check for f in report.failed}


def test_good_file_passes(tmp_path):
    report = _check(good_frame(), tmp_path)
    assert report.success, to_markdown(report)
    files = write_report(report, tmp_path / "out")
    assert "PASSED" in files["markdown"].read_text()


def test_good_jsonl_passes(tmp_path):
    assert _check(good_frame(), tmp_path, fmt="jsonl").success


def test_nulls(tmp_path):
    df = good_frame()
    df.loc[3, "trace"] = None
    report = _check(df, tmp_path)
    assert "`trace` has no nulls" in _failed(report)


def test_duplicate_ids(tmp_path):
    df = good_frame()
    df.loc[1, "trace_id"] = df.loc[0, "trace_id"]
    report = _check(df, tmp_path)
    assert "`trace_id` is unique" in _failed(report)
    finding = next(f for f in report.failed if f.check == "`trace_id` is unique")
    assert finding.unexpected == 2 and df.loc[0, "trace_id"] in finding.examples


def test_unknown_label(tmp_path):
    df = good_frame()
    df.loc[2, "label"] = "maybe"
    report = _check(df, tmp_path)
    assert any(c.startswith("`label` in") for c in _failed(report))
    assert "maybe" in to_markdown(report)


def test_prompt_leaked_across_splits(tmp_path):
    df = good_frame()
    leaked = df.prompt_id == df.prompt_id[0]
    df.loc[leaked.idxmax(), "split"] = "train" if df.loc[0, "split"] == "val" else "val"
    report = _check(df, tmp_path)
    assert "no prompt in two splits" in _failed(report)


def test_safe_equals_unsafe(tmp_path):
    df = good_frame()
    unsafe = df[(df.prompt_id == df.prompt_id[0]) & (df.label == "unsafe")].index[0]
    df.loc[unsafe, "trace"] = df.loc[0, "trace"]
    report = _check(df, tmp_path)
    assert "no trace carries two labels for one prompt (safe == unsafe)" in _failed(report)


def test_class_imbalance_and_missing_label(tmp_path):
    df = good_frame(20)
    df = df[(df.label != "unsafe") | (df.index < 3)].reset_index(drop=True)  # 1 unsafe row of 41
    report = _check(df, tmp_path)
    assert any("every label holds" in c for c in _failed(report))


def test_missing_column_and_bad_types(tmp_path):
    df = good_frame().drop(columns=["category"])
    df["p_safe"] = np.where(df.index == 0, 7.0, df.p_safe)
    report = _check(df, tmp_path)
    failed = _failed(report)
    assert "column `category` exists" in failed and "`p_safe` in [0, 1]" in failed


def test_length_bounds(tmp_path):
    df = good_frame()
    df.loc[0, "trace"] = "x" * 30000
    assert "`trace` length in [1, 20000]" in _failed(_check(df, tmp_path))


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf8 \x80", b"{not json}\n"])
def test_unreadable_files_fail_with_a_reason(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    report = run(path, CFG)
    assert not report.success and report.failed[0].check == "file is a readable table"
    assert str(path) in report.failed[0].examples[0]


def test_report_lists_every_problem(tmp_path):
    df = good_frame()
    df.loc[3, "trace"] = None
    df.loc[1, "trace_id"] = df.loc[0, "trace_id"]
    df.loc[2, "label"] = "maybe"
    md = to_markdown(_check(df, tmp_path))
    assert "FAILED" in md
    for needle in ("`trace` has no nulls", "`trace_id` is unique", "`label` in"):
        assert needle in md


def test_traces_sharing_an_opening_are_not_a_conflict(tmp_path):
    """A rethink trace starts with the unsafe trace's words; only identical traces conflict."""
    df = good_frame()
    unsafe = df[(df.prompt_id == df.prompt_id[0]) & (df.label == "unsafe")].index[0]
    rethink = df[(df.prompt_id == df.prompt_id[0]) & (df.label == "rethink")].index[0]
    df.loc[unsafe, "trace"] = "word " * 60
    df.loc[rethink, "trace"] = "word " * 60 + "Wait, this is harmful; I decline."
    assert _check(df, tmp_path).success
