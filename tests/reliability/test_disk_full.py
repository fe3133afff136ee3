"""A full disk (or a file-size limit) while a stage writes: one line, exit 2, previous outputs intact,
no temporary file left."""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from components import validate
from components.core.errors import guarded
from tests.factories import good_frame

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def _validated(tmp_path: Path) -> tuple[list[str], dict[str, bytes]]:
    good_frame().to_parquet(tmp_path / "pairs.parquet")
    (tmp_path / "params.yaml").write_text("{}\n")
    argv = ["--data", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    assert guarded(validate.STAGE, lambda: validate.main(argv)) == 0
    return argv, _snapshot(tmp_path / "out")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_disk_full_mid_write_keeps_the_previous_outputs(tmp_path, capsys, monkeypatch):
    argv, before = _validated(tmp_path)
    real_write = Path.write_text

    def full_disk(self, data, *args, **kwargs):  # half the bytes land, then the disk is full
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    capsys.readouterr()
    assert guarded(validate.STAGE, lambda: validate.main(argv)) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "INFO" not in line]
    assert len(err) == 1 and "No space left on device" in err[0] and "previous ones are intact" in err[0], err
    assert _snapshot(tmp_path / "out") == before  # no torn file, no temporary file


def test_a_file_size_limit_in_a_real_process_is_one_line(tmp_path):
    """The kernel refuses the writes (RLIMIT_FSIZE: EFBIG), including the MLflow store's."""
    argv, before = _validated(tmp_path)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, "-m", "components.validate", *argv], cwd=ROOT, preexec_fn=limit,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if "INFO" not in line]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "disk" in lines[0] or "File too large" in lines[0]
    assert _snapshot(tmp_path / "out") == before
