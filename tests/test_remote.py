"""Shared data through a DVC remote (flows/remote.py): push after a run, pull into a fresh clone,
and ``dvc repro validate`` there regenerates nothing."""
from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.remote import RemoteError, configured_remote, pull, push_if_configured
from tests.conftest import make_workspace

LOG = logging.getLogger("craft.test_remote")


def _dvc(cwd: Path, *args: str) -> str:
    from flows.pipeline import stage_env  # PATH with this interpreter: dvc.yaml's `python -m …` stages

    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=stage_env(None),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _params(tiny_model_dir: Path) -> str:
    """Only the sections the stages up to validate read, sized for seconds on the tiny model."""
    return yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu", "threads": 1},
        "ingest": {"sources": ["harmbench", "aplomb"], "max_harmful": 16, "max_benign": 8, "max_val_benign": 2,
                   "max_test_harmful": 4, "max_test_benign": 2},
        "curate": {"max_new_tokens": 6, "batch_size": 8, "temperature": 1.0, "judge": "keyword"},
        "validate": {"min_rows": 10},
    })


def _bare_workspace(path: Path) -> Path:
    """git + DVC, one DVC-tracked file, no stages run: enough for the remote logic alone."""
    path.mkdir(parents=True)
    _git(path, "init", "-q")
    _dvc(path, "init", "-q")
    (path / "data.txt").write_text("rows\n")
    _dvc(path, "add", "-q", "data.txt")
    return path


def test_no_remote_pushes_nothing_and_says_so(tmp_path, caplog):
    ws = _bare_workspace(tmp_path / "ws")
    assert configured_remote(ws) is None
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert push_if_configured(ws, LOG) is False
    assert len(caplog.records) == 1 and "no default DVC remote" in caplog.records[0].getMessage()
    with pytest.raises(RemoteError, match="no default DVC remote"):
        pull(ws, LOG)


def test_push_logs_what_it_sent_and_pull_restores_it(tmp_path, caplog):
    ws = _bare_workspace(tmp_path / "ws")
    _dvc(ws, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    assert configured_remote(ws) == "shared"
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert push_if_configured(ws, LOG) is True
        assert caplog.records[-1].getMessage() == f"dvc push to remote 'shared' ({tmp_path / 'remote'}): 1 file pushed"
        assert push_if_configured(ws, LOG) is True  # nothing new: still a success
        assert "Everything is up to date" in caplog.records[-1].getMessage()

    (ws / "data.txt").unlink()
    _dvc(ws, "cache", "dir", str(tmp_path / "empty-cache"))  # nothing local: the file can only come from the remote
    assert "1 file added" in pull(ws, LOG)
    assert (ws / "data.txt").read_text() == "rows\n"


def test_unreachable_remote_is_one_line_user_error(tmp_path):
    ws = _bare_workspace(tmp_path / "ws")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a remote "directory" under a regular file can never be written
    _dvc(ws, "remote", "add", "-d", "broken", str(blocker / "remote"))
    with pytest.raises(RemoteError) as err:
        push_if_configured(ws, LOG)
    message = str(err.value)
    assert "\n" not in message and "dvc push to remote 'broken' (" in message and "Not a directory" in message
    (ws / "data.txt").unlink()
    _dvc(ws, "cache", "dir", str(tmp_path / "empty-cache"))  # so the pull has to reach the remote
    with pytest.raises(RemoteError, match="dvc pull from remote 'broken'"):
        pull(ws, LOG)


@pytest.mark.slow
def test_a_clone_pulls_the_pushed_run_and_validate_recomputes_nothing(tiny_model_dir, tmp_path):
    """The data steward's path: a run up to validate is pushed and committed; a fresh clone pulls it,
    and ``dvc repro validate`` there skips every stage (``sources`` always re-hashes, with the same result)."""
    ws = make_workspace(tmp_path / "ws", _params(tiny_model_dir))
    (ws / ".gitignore").write_text("mlruns/\n.prefect/\n.cache/\n.craft-run.lock\n__pycache__/\n")
    _dvc(ws, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    _dvc(ws, "repro", "validate")
    assert push_if_configured(ws, LOG) is True
    assert "in sync" in _dvc(ws, "status", "--cloud")  # every cached output is on the remote
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "run up to validate")

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(ws), str(clone))
    assert not (clone / "data" / "curate" / "traces.parquet").exists()  # cached outputs are not in git
    pull(clone, LOG)
    traces = Path("data") / "curate" / "traces.parquet"
    assert _md5(clone / traces) == _md5(ws / traces)
    lock, mtime = (clone / "dvc.lock").read_text(), (clone / traces).stat().st_mtime_ns

    repro = _dvc(clone, "repro", "validate")
    for stage in ("ingest", "curate", "validate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro, repro
    assert "Running stage 'curate'" not in repro
    assert (clone / traces).stat().st_mtime_ns == mtime and _md5(clone / traces) == _md5(ws / traces)
    assert (clone / "dvc.lock").read_text() == lock
    assert _git(clone, "status", "--porcelain") == ""  # validate's report and every git-tracked output unchanged
    status = _dvc(clone, "status", "validate", "--with-deps")
    assert "changed" not in status.replace("always changed", ""), status  # only `sources`, by design
