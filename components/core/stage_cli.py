"""The command line every stage module shares: ``--params`` plus the stage's own paths.

Paths live in dvc.yaml (the stage's ``cmd``); settings in params.yaml. This sets the offline
environment and logging, parses the arguments and loads the params file.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from components.core import env, lifecycle
from components.core.config import load_params
from components.core.errors import UserError, quiet_library_traces


def parse(stage: str, doc: str | None, argv: Sequence[str] | None,
          paths: Sequence[tuple[str, bool, str]]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """``paths``: (flag, required, help). Returns the parsed arguments and params.yaml."""
    parser = argparse.ArgumentParser(prog=f"python -m components.{stage}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    for flag, required, text in paths:
        parser.add_argument(flag, required=required, help=text)
    args = parser.parse_args(argv)
    env.configure()
    lifecycle.stop_on_sigterm()  # SIGTERM ends MLflow runs as KILLED and removes temporary files
    lifecycle.watch_supervisor()  # stop when the `craft run` that started this stage is gone
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_library_traces()
    return args, load_params(args.params)


class DatasetRejected(UserError):
    """A training stage was asked to run on a pair dataset that failed validation."""


def require_validated(result: str | Path) -> None:
    """Refuse to go on unless ``validate``'s result.json says the dataset passed (so even
    ``dvc repro --single-item extract`` stops after a failed validation)."""
    path = Path(result)
    if not path.is_file():
        raise DatasetRejected(f"{path} not found: run `dvc repro validate` before training.")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("success") is not True:
        raise DatasetRejected(f"the pair dataset failed validation ({path}); read {path.with_name('report.md')}, "
                              "fix the data, then re-run `dvc repro validate`.")
