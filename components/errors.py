"""User-facing errors and the guard every entry point runs under.

Errors a user can fix (bad settings, unreadable data, missing packages, an unreachable server)
become one readable line and exit status 2, never a stack trace. Anything else is a bug and
keeps its trace.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

from components.config import ConfigError
from components.io import DataFileError
from components.prompt_sources import SourceError


class ServiceUnavailable(RuntimeError):
    """A configured server (MLflow tracking, Prefect API) does not answer."""


USER_ERRORS = (ConfigError, DataFileError, SourceError, ServiceUnavailable, FileNotFoundError)


def guarded(name: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; report user errors as ``<name>: error: …`` and return 2."""
    try:
        return fn()
    except USER_ERRORS as exc:
        logging.getLogger("craft").debug("user error", exc_info=True)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
