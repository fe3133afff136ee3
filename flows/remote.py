"""Shared data: push the pipeline's DVC-cached outputs to the default DVC remote, pull them back.

With a default remote set (``dvc remote add -d shared /mnt/craft-dvc``; docs/data-steward.md), a
finished run's outputs go to the remote, and a fresh clone that pulls them (``pull`` below, or
``dvc pull validate --with-deps``) has every output ``dvc.lock`` names: ``dvc repro validate`` then
skips ingest, curate and validate instead of regenerating the traces with the model. Without a remote nothing is pushed and nothing fails:
pushing is opt-in per repository. DVC runs as ``<this interpreter> -m dvc`` (the same environment
as the stages); the library in ``components/`` never imports DVC.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

from components.core.errors import UserError
from components.core.tracking import redact

Log = logging.Logger | logging.LoggerAdapter


class RemoteError(UserError):
    """A DVC remote is missing or does not answer (a user error: one line, exit 2)."""

    exit_code = 2


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    # push, pull and config run no stage command, so the caller's environment is all they need
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          errors="replace")


def configured_remote(root: str | Path) -> str | None:
    """The name of the workspace's default DVC remote (any config level: repo, local, global,
    system), or None when none is set."""
    found = _dvc(Path(root), "remote", "default")
    name = found.stdout.strip()
    return name if found.returncode == 0 and name else None


def remote_url(root: str | Path, name: str) -> str:
    """The remote's URL with any user:password hidden, for log lines and error messages."""
    found = _dvc(Path(root), "config", f"remote.{name}.url")
    return redact(found.stdout.strip()) if found.returncode == 0 else "?"


def _last_error(proc: subprocess.CompletedProcess) -> str:
    """DVC's last error with the lines that continue it (e.g. the files a checkout missed), as one
    line without DVC's ``ERROR:`` prefix and support links."""
    lines = [l.strip() for l in (proc.stderr + "\n" + proc.stdout).splitlines() if l.strip()]
    starts = [i for i, l in enumerate(lines) if l.startswith("ERROR")]
    tail = lines[starts[-1]:] if starts else lines[-1:] or [f"exit {proc.returncode}"]
    tail = [l for l in tail if not l.startswith(("<http", "Having any troubles", "WARNING"))]
    text = " ".join(tail).removeprefix("ERROR:").strip().rstrip(".")
    return redact(text if len(text) <= 400 else text[:400] + " …")


def _warn(proc: subprocess.CompletedProcess, log: Log) -> None:
    """DVC's warnings on a successful transfer (e.g. outputs missing from the cache, so not pushed)."""
    for line in proc.stderr.splitlines():
        if line.startswith("WARNING"):
            log.warning("dvc: %s", redact(line.removeprefix("WARNING:").strip()))


def _summary(proc: subprocess.CompletedProcess) -> str:
    """DVC's closing line, e.g. ``3 files pushed`` or ``Everything is up to date.``"""
    lines = [l.strip() for l in proc.stdout.splitlines() if l.strip()]
    return lines[-1] if lines else "nothing to transfer"


def push_if_configured(root: str | Path, log: Log) -> bool:
    """``dvc push`` every cached output in ``dvc.lock`` to the default remote; True when pushed.

    No default remote: logs one line and returns False. A failed push (remote unreachable, no
    credentials, no plugin for its scheme) raises ``RemoteError`` with DVC's error on one line.
    Outputs missing from the local cache are not an error to DVC: they are logged as warnings.
    """
    root = Path(root)
    name = configured_remote(root)
    if name is None:
        log.info("no default DVC remote: outputs stay in this workspace's cache "
                 "(share them with `dvc remote add -d <name> <url>`; docs/data-steward.md)")
        return False
    url = remote_url(root, name)
    proc = _dvc(root, "push")
    if proc.returncode != 0:
        raise RemoteError(f"dvc push to remote '{name}' ({url}) failed ({_last_error(proc)}). Check the URL "
                          f"and credentials (`dvc remote modify --local {name} …`), or unset the default remote "
                          "(`dvc remote default --unset`) to keep outputs local.")
    _warn(proc, log)
    log.info("dvc push to remote '%s' (%s): %s", name, url, _summary(proc))
    return True


def recorded_stages(root: str | Path) -> list[str]:
    """The dvc.yaml stages that ``dvc.lock`` records a run of. A plain ``dvc pull`` also tries the
    outputs of stages never run (after ``craft run --stages …`` up to validate, say) and fails on them."""
    root = Path(root)
    lock = root / "dvc.lock"
    if not lock.exists() or not (root / "dvc.yaml").exists():
        return []
    defined = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    return [s for s in (yaml.safe_load(lock.read_text()) or {}).get("stages") or {} if s in defined]


def pull(root: str | Path, log: Log, targets: Sequence[str] = ()) -> str:
    """``dvc pull`` from the default remote the outputs of every stage ``dvc.lock`` records (or only
    ``targets``: stages or paths); returns DVC's summary line. No default remote, or a failed pull,
    raises ``RemoteError`` (the user asked for the data: having none is an error)."""
    root = Path(root)
    name = configured_remote(root)
    if name is None:
        raise RemoteError(f"{root} has no default DVC remote to pull from; add the shared one with "
                          "`dvc remote add -d <name> <url>` (docs/data-steward.md).")
    targets = list(targets) or recorded_stages(root)  # none (no dvc.lock): everything DVC tracks
    url = remote_url(root, name)
    proc = _dvc(root, "pull", *targets)
    if proc.returncode != 0:
        raise RemoteError(f"dvc pull from remote '{name}' ({url}) failed ({_last_error(proc)}). Check the URL "
                          f"and credentials (`dvc remote modify --local {name} …`), and that a run was pushed there.")
    summary = _summary(proc)
    _warn(proc, log)
    log.info("dvc pull from remote '%s' (%s): %s", name, url, summary)
    return summary
