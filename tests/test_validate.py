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


# --- Reliability, round two (#6, #11) ----------------------------------------------------------


def test_good_csv_passes(tmp_path):
    """CSV holds only text: p_safe must still be read as a number (it used to fail `p_safe in [0, 1]`)."""
    path = tmp_path / "pairs.csv"
    good_frame().to_csv(path, index=False)
    report = run(path, CFG)
    assert report.success, to_markdown(report)


def test_csv_with_a_bad_p_safe_names_the_value(tmp_path):
    df = good_frame()
    df["p_safe"] = df["p_safe"].astype(object)
    df.loc[4, "p_safe"] = "high"
    df.loc[5, "p_safe"] = ""  # an empty CSV cell is a null number
    path = tmp_path / "pairs.csv"
    df.to_csv(path, index=False)
    report = run(path, CFG)
    failed = {f.check: f for f in report.failed}
    assert failed["`p_safe` is a number"].examples == ("high",)
    assert failed["`p_safe` has no nulls"].unexpected == 1


def test_a_check_that_crashes_inside_gx_is_reported_as_crashed(tmp_path):
    """GX 1.x keys exception_info by metric id; the crash used to show as a failure with 0 rows."""
    df = good_frame()
    df["p_safe"] = df["p_safe"].astype(object)
    df.loc[0, "p_safe"] = "abc"  # a str among floats: ExpectColumnValuesToBeBetween raises
    report = _check(df, tmp_path, fmt="jsonl")
    crashed = next(f for f in report.failed if f.check == "`p_safe` in [0, 1]")
    assert crashed.crashed and "same type" in crashed.error
    md = to_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| `p_safe` in [0, 1]"))
    assert "| crashed |" in row and "check crashed: " in row and crashed.error[:40] in row
    assert "crashed" in write_report(report, tmp_path / "out")["html"].read_text()
    assert not any(f.crashed for f in report.findings if f.check != "`p_safe` in [0, 1]")


def test_crash_message_reads_both_gx_shapes():
    from components.data.expectations import crash_message

    ok = {"raised_exception": False, "exception_traceback": None, "exception_message": None}
    assert crash_message(ok) == "" and crash_message(None) == ""
    assert crash_message({**ok, "raised_exception": True, "exception_message": "boom"}) == "boom"
    nested = {"MetricConfigurationID(metric_name='column_values.between.condition', ...)":
              {"raised_exception": "True", "exception_message": "Column values ... same type.",
               "exception_traceback": "Traceback ..."}}
    assert crash_message(nested) == "Column values ... same type."
    assert crash_message({"m": {**ok, "raised_exception": "False"}}) == ""


def test_huge_cells_do_not_blow_up_the_record(tmp_path):
    """A 3 MB trace used to be stored several times over in result.json (50 MB → 157 MB)."""
    import json

    from components.data.expectations import MAX_CHARS, MAX_EXAMPLES

    df = good_frame(20)
    df.loc[0, "trace"] = "x" * 3_000_000
    df.loc[1:30, "label"] = "maybe"  # 30 unexpected values: more than MAX_EXAMPLES
    report = _check(df, tmp_path)
    files = write_report(report, tmp_path / "out")
    assert files["result"].stat().st_size < 300_000
    assert files["markdown"].stat().st_size < 20_000 and files["html"].stat().st_size < 40_000
    record = json.loads(files["result"].read_text())

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            assert len(obj) <= MAX_EXAMPLES
            for v in obj:
                walk(v)
        elif isinstance(obj, str):
            assert len(obj) <= MAX_CHARS + 30

    for suite in record["gx"].values():
        for r in suite["results"]:
            walk(r["result"])
    label = next(r for r in record["gx"]["rows"]["results"]
                 if r["expectation_config"]["type"] == "expect_column_values_to_be_in_set"
                 and r["expectation_config"]["kwargs"]["column"] == "label")
    assert label["result"]["unexpected_count"] == 30 and label["result"]["truncated_lists"]["unexpected_list"] == 30
    assert "`trace` length in [1, 20000]" in _failed(report)


def test_bounded_record_caps_lists_and_strings():
    from components.data.expectations import bounded_record

    raw = {"success": False, "results": [{"result": {"unexpected_list": ["y" * 1000] * 50, "observed_value": 3},
                                          "exception_info": {"raised_exception": False},
                                          "expectation_config": {"kwargs": {"column": "trace"}}}]}
    out = bounded_record(raw)["results"][0]["result"]
    assert len(out["unexpected_list"]) == 20 and out["unexpected_list"][0].startswith("y" * 200 + "…")
    assert out["truncated_lists"] == {"unexpected_list": 50} and out["observed_value"] == 3


@pytest.mark.parametrize("entry", ["cli", "stage"])
def test_validating_a_missing_path_is_one_line_and_creates_nothing(tmp_path, capsys, entry):
    from components import validate
    from components.core.errors import guarded
    from flows.cli import main as craft

    missing = tmp_path / "nowhere" / "pairs.parquet"
    if entry == "cli":
        code = craft(["validate", str(missing)])
    else:
        (tmp_path / "params.yaml").write_text("{}\n")
        code = guarded("validate", lambda: validate.main(["--data", str(missing), "--out", str(tmp_path / "out"),
                                                          "--params", str(tmp_path / "params.yaml")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "file not found" in err[0] and str(missing) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["params.yaml"] if entry == "stage" else [])
