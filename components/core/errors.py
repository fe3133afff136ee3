"""User-facing errors and the guard every entry point runs under.

Errors a user can fix (bad settings, unreadable data, missing packages, an unreachable server)
derive from ``UserError``; they become one readable line and exit status 2, never a stack
trace. Anything else is a bug and keeps its trace. This module imports nothing from the
project, so every layer can raise a ``UserError``.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable


class UserError(Exception):
    """Something the user can fix; the message names the bad value and says how to fix it."""


class ServiceUnavailable(UserError, RuntimeError):
    """A configured server (MLflow tracking, Prefect API) does not answer."""


USER_ERRORS = (UserError, FileNotFoundError)

EXIT_USER_ERROR = 2


def guarded(name: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; report user errors as ``<name>: error: …`` and return 2."""
    try:
        return fn()
    except USER_ERRORS as exc:
        logging.getLogger("craft").debug("user error", exc_info=True)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
