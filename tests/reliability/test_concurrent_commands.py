"""Two commands of one kind at once: each either completes with whole outputs or is refused in one
line. (Two `craft run` and two registry commands: test_user_errors.py, test_registry_service.py,
test_concurrency_and_safety.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import good_frame

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def _craft(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_validations_into_one_folder_both_finish_with_whole_reports(tmp_path):
    good_frame().to_parquet(tmp_path / "pairs.parquet")
    procs = [_craft("validate", "pairs.parquet", "--out", "report", cwd=tmp_path) for _ in range(2)]
    outcomes = [(p.wait(300), p.stderr.read()) for p in procs]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["success"] is True
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Pair dataset validation: PASSED")
    assert not [p.name for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_seeds_while_a_run_holds_the_workspace_is_refused_at_once(tmp_path, capsys, monkeypatch):
    import flows.seeds
    from flows import cli
    from flows.pipeline import workspace_lock

    monkeypatch.setattr(flows.seeds, "require_committed", lambda root: None)
    monkeypatch.setattr(flows.seeds, "seed_sweep", lambda *a, **k: pytest.fail("the sweep must not start"))
    with workspace_lock(tmp_path.resolve()):
        code = cli.main(["seeds", "--seeds", "1", "--workspace", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another `craft run` is using" in err[0], err


def test_two_dvc_repro_by_hand_the_second_is_refused_and_the_first_finishes(tmp_path):
    """Outside craft (a steward's `dvc repro`), DVC's own lock refuses the second in one message."""
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(dvc + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: python -c \"import time; open('started', 'w').close(); time.sleep(4); "
        "open('out.txt', 'w').write('done')\"\n    outs: [out.txt]\n")
    first = subprocess.Popen(dvc + ["repro"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time

    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.run(dvc + ["repro"], cwd=tmp_path, capture_output=True, text=True)
    assert first.wait(120) == 0 and (tmp_path / "out.txt").read_text() == "done"
    assert second.returncode != 0 and "lock" in (second.stderr + second.stdout).lower()
