"""User-facing errors and the guard every entry point runs under.

Errors a user can fix (bad settings, unreadable data, missing packages, an unreachable server)
derive from ``UserError``; they become one readable line and exit status 2, never a stack
trace. Anything else is a bug and keeps its trace. This module imports nothing from the
project, so every layer can raise a ``UserError``.
"""
from __future__ import annotations

import errno
import logging
import sys
from typing import Callable


class UserError(Exception):
    """Something the user can fix; the message names the bad value and says how to fix it."""


class ServiceUnavailable(UserError, RuntimeError):
    """A configured server (MLflow tracking, Prefect API) does not answer."""


USER_ERRORS = (UserError, FileNotFoundError)

EXIT_USER_ERROR = 2

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
"""Write failures of the machine, not the code: disk full, quota, file-size limit, read-only."""


def storage_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return (f"cannot write{where}: {exc.strerror or exc}. Free space (or lift the quota or file-size "
            "limit) and run again: outputs are replaced only when complete, so the previous ones are intact.")


QUIETED_LOGGERS = ("mlflow.store.db.utils",)
"""Libraries that log a full trace of an error they then raise: the raised error is what we report
(one line), so their copy is dropped."""


def quiet_library_traces() -> None:
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def guarded(name: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; report user errors as ``<name>: error: …`` and return 2."""
    try:
        return fn()
    except USER_ERRORS as exc:
        logging.getLogger("craft").debug("user error", exc_info=True)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        logging.getLogger("craft").debug("storage error", exc_info=True)
        print(f"{name}: error: {storage_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
