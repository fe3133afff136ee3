"""User mistakes are one line and exit 2, never a traceback; `craft run` passes a stage's 2 on."""
from __future__ import annotations

import json

import pytest

from flows import cli


def test_stage_name_typo_is_one_line_exit_2_before_prefect(capsys, monkeypatch):
    import flows.pipeline

    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: pytest.fail("the flow must not start"))
    assert cli.main(["run", "--stages", "ingest,trian_rl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage(s) ['trian_rl']" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("stage_exit, expected", [(2, 2), (1, 1)])
def test_craft_run_passes_a_stages_exit_code_on(tmp_path, capsys, monkeypatch, stage_exit, expected):
    import flows.pipeline
    from components.core import tracking

    def failing(**kw):
        raise flows.pipeline.StageFailed("stage 'curate' failed", exit_code=stage_exit)

    monkeypatch.setattr(flows.pipeline, "pipeline", failing)
    monkeypatch.setattr(tracking, "ensure_store", lambda: None)
    (tmp_path / "params.yaml").write_text("{}\n")
    assert cli.main(["run", "--workspace", str(tmp_path)]) == expected
    assert "stage 'curate' failed" in capsys.readouterr().err


def test_stage_exit_code_is_read_from_dvc_output():
    from flows.pipeline import _stage_exit_code

    assert _stage_exit_code(["ERROR: failed to reproduce 'curate': failed to run: python -m …, exited with 2"]) == 2
    assert _stage_exit_code(["no code here"]) is None


def test_adapter_on_another_base_is_a_user_error(tmp_path, tiny_model_dir):
    from components.core.errors import UserError
    from components.lm.source import ModelConfig
    from components.lm.under_test import load_under_test

    (tmp_path / "model.json").write_text(json.dumps({"base_model_source": str(tiny_model_dir),
                                                     "base_model_fingerprint": "not-this-one"}))
    with pytest.raises(UserError, match="retrain the adapter"):
        load_under_test(str(tmp_path), ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu"))


@pytest.mark.parametrize("validation, message", [
    ({"success": False}, "failed validation"),
    (None, "run `dvc repro validate`"),
])
def test_extract_refuses_a_dataset_that_failed_validation(tmp_path, capsys, validation, message):
    """Even `dvc repro --single-item extract` stops after a failed validate: one line, exit 2."""
    from components import extract, train_sft
    from components.core.errors import guarded

    result = tmp_path / "result.json"
    if validation is not None:
        result.write_text(json.dumps(validation))
    for stage in (extract, train_sft):
        argv = ["--data", str(tmp_path / "traces.parquet"), "--validation", str(result), "--out", str(tmp_path / "o"),
                "--params", str(tmp_path / "params.yaml")]
        (tmp_path / "params.yaml").write_text("{}\n")
        assert guarded(stage.STAGE, lambda: stage.main(argv)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "o").exists()


def test_runtime_keys_under_model_are_a_config_error():
    from components.core.config import ConfigError
    from components.lm.source import model_config

    with pytest.raises(ConfigError, match="belong in the 'runtime' section"):
        model_config({"model": {"threads": 4}})
    with pytest.raises(ConfigError, match=r"runtime: unknown setting\(s\) \['gpu'\]"):
        model_config({"runtime": {"gpu": 1}})
    assert model_config({"model": {"dtype": "float32"}, "runtime": {"threads": 3}}).threads == 3


def _run_in(ws, capsys, monkeypatch, params_text: str) -> tuple[int, list[str]]:
    import flows.pipeline

    (ws / "params.yaml").write_text(params_text)
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: pytest.fail("the flow must not start"))
    code = cli.main(["run", "--workspace", str(ws)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("params_text, message", [
    ("ingest: {max_harmful: lots}\n", "ingest.max_harmful: expected int, got 'lots'"),
    ("ingest: [unclosed\n", "is not valid YAML"),
    ("evaluate: {judge: ensemble}\ntrain_rl: {judge: ensemble}\n", "trained to please it"),
    ("evaluat: {max_harmful: 3}\n", "unknown section(s) ['evaluat']"),
    ("model: {threads: 4}\n", "belong in the 'runtime' section"),
    ("train_rl_text: {w_lat: -1, w_txt: 1, wat: 2}\n", "unknown setting(s) ['wat']"),
])
def test_craft_run_checks_every_section_before_prefect(tmp_path, capsys, monkeypatch, params_text, message):
    code, err = _run_in(tmp_path, capsys, monkeypatch, params_text)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / ".prefect").exists()


def test_a_second_craft_run_is_refused_at_once(tmp_path, capsys, monkeypatch):
    import time

    from flows.pipeline import workspace_lock

    with workspace_lock(tmp_path.resolve()):
        started = time.monotonic()
        code, err = _run_in(tmp_path, capsys, monkeypatch, "ingest: {max_harmful: 5}\n")
    assert code == 2 and len(err) == 1 and "another `craft run` is using" in err[0]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("command", [
    ["evaluate", "--model", "base", "--prompts", "p.jsonl"],
    ["validate", "pairs.jsonl"],
])
def test_out_naming_an_existing_file_is_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Hi there?", "prompt_kind": "benign"}\n')
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    assert cli.main(command + ["--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an existing file" in err[0]
    assert (tmp_path / "taken").read_text() == "x"


def test_evaluating_a_model_that_does_not_exist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "Hi there?", "prompt_kind": "benign"}\n')
    (tmp_path / "params.yaml").write_text("evaluate: {judge: keyword}\n")
    assert cli.main(["evaluate", "--model", "nope", "--prompts", "p.jsonl", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model nope: no such folder" in err[0]


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/model", "no such directory"),
    ("./models/mine", "no such directory"),
    ("no-such-org/no-such-model", "not in the local Hugging Face cache"),
])
def test_a_model_source_that_cannot_be_found_is_one_line(tmp_path, capsys, monkeypatch, source, message):
    code, err = _run_in(tmp_path, capsys, monkeypatch, f"model: {{source: {source}}}\n")
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


def test_a_stage_given_a_missing_model_directory_is_one_line(tmp_path, capsys):
    """The stage module itself (`dvc repro` without craft) says the same, before loading anything."""
    from components import curate
    from components.core.errors import guarded

    import pandas as pd

    (tmp_path / "params.yaml").write_text("model: {source: /nonexistent/model}\n")
    pd.DataFrame({"prompt_id": ["a"], "prompt": ["Harm?"], "prompt_kind": ["harmful"], "split": ["train"],
                  "source": ["x"]}).to_parquet(tmp_path / "p.parquet")
    argv = ["--prompts", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "o"), "--params", str(tmp_path / "params.yaml")]
    assert guarded(curate.STAGE, lambda: curate.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no such directory" in err[-1] and "Traceback" not in "\n".join(err)
