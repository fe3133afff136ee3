"""How a process of the pipeline ends when it is told to stop, or when the run it serves dies.

- ``stop_on_sigterm``: SIGTERM (a scheduler's timeout, ``kill``, systemd) raises ``Interrupted``
  in the main thread, as Ctrl-C raises KeyboardInterrupt, so ``finally`` blocks and context
  managers run: MLflow runs end as KILLED, temporary files are removed.
- ``watch_supervisor``: a stage started by ``craft run`` stops itself when that process is gone
  (killed with SIGKILL, so it could not stop its children): an orphaned stage would otherwise go
  on writing outputs while a rerun starts beside it.
- ``process_token`` / ``token_alive``: a process identity that survives PID reuse (PID plus its
  start time from /proc where there is one), recorded on MLflow runs so that the next start can
  tell a run whose process died (and mark it KILLED) from one still running.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SUPERVISOR_ENV = "CRAFT_SUPERVISOR"
"""Token of the ``craft run`` process a stage works for (set by the flow in the stage's env)."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); like KeyboardInterrupt, not an ``Exception``."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``Interrupted`` in the main thread (no-op outside it)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum, _frame):
        raise Interrupted(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


def _stat(pid: int) -> list[str] | None:
    """Fields 3… of /proc/<pid>/stat (after the command name's ")"), None where /proc has none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of proc(5)), None without /proc."""
    fields = _stat(pid)
    return fields[19] if fields else None


def process_token(pid: int | None = None) -> str:
    """``"<pid>:<start time>"`` (or ``"<pid>"`` without /proc) of ``pid``, by default this process."""
    pid = os.getpid() if pid is None else pid
    started = _start_time(pid)
    return f"{pid}:{started}" if started else str(pid)


def token_alive(token: str) -> bool:
    """Whether the process ``token`` names still runs (a reused PID does not count)."""
    pid_text, _, started = token.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    fields = _stat(pid)
    if fields is None:
        return not started
    return fields[0] != "Z" and (not started or fields[19] == started)  # a zombie has ended


def watch_supervisor(interval: float = 2.0) -> threading.Thread | None:
    """When ``CRAFT_SUPERVISOR`` is set, send this process SIGTERM once that process is gone."""
    token = os.environ.get(SUPERVISOR_ENV)
    if not token:
        return None

    def _watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if not token_alive(token):
                log.warning("the craft run that started this stage (process %s) is gone; stopping", token)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=_watch, name="craft-supervisor-watch", daemon=True)
    thread.start()
    return thread
