"""Every ``craft`` subcommand, given a representative bad input: one line on stderr, exit 2, no trace.

A new subcommand without a case here fails ``test_every_subcommand_has_a_case``."""
from __future__ import annotations

import argparse

import pytest

from flows import cli

pytestmark = pytest.mark.reliability

BAD_PARAMS = "ingest: [unclosed\n"
CASES = {
    "run": (["run", "--stages", "bogus"], "unknown stage(s) ['bogus']"),
    "validate": (["validate", "missing.jsonl", "--out", "v"], "missing.jsonl"),
    "evaluate": (["evaluate", "--model", "base", "--prompts", "missing.jsonl", "--out", "e"], "missing.jsonl"),
    "register": (["register", "--model-key", "nothing_here"], "has no evaluation"),
    "promote": (["promote", "--force"], "--reason"),
    "rollback": (["rollback", "--workspace", "bad"], "is not valid YAML"),
    "models": (["models", "--workspace", "bad"], "is not valid YAML"),
    "audit": (["audit", "Hello?", "--model", "nope"], "nope"),
    "seeds": (["seeds", "--seeds", "one,two"], "--seeds"),
    "gold-sample": (["gold-sample", "--prompts", "missing.parquet"], "missing.parquet"),
    "reward-check": (["reward-check", "--models", "nope"], "nope"),
    "schedule": (["schedule", "--cron", "0 3 * * 0", "--timezone", "Mars/Olympus_Mons"], "Mars/Olympus_Mons"),
    "pull": (["pull", "--workspace", "bad"], "bad"),
    "cache": (["cache", "--older-than", "-3"], "--older-than"),
}


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_every_subcommand_has_a_case():
    assert sorted(set(_subcommands()) - set(CASES)) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, monkeypatch, capsys):
    if name not in _subcommands():
        pytest.skip(f"no `craft {name}` in this build")
    argv, expected = CASES[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "params.yaml").write_text(BAD_PARAMS)
    (tmp_path / "params.yaml").write_text("{}\n")
    capsys.readouterr()
    code = cli.main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO " not in f" {line} "]
    assert code == 2 and len(err) == 1, err
    assert expected in err[0] and "Traceback" not in err[0], err
