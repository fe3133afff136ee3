"""The command line every stage module shares: ``--params`` plus the stage's own paths.

Paths live in dvc.yaml (the stage's ``cmd``); settings in params.yaml. This sets the offline
environment and logging, parses the arguments and loads the params file.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from components import env
from components.config import load_params


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args, load_params(args.params)
