"""``--json`` output of the ``craft`` commands: one strict JSON document on the real stdout."""
from __future__ import annotations

import argparse
import json
import math
import sys


def jsonable(value):
    """Strict JSON: NaN and infinities as null, numpy scalars as numbers, anything else unknown as text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalar
        return jsonable(value.item())
    return str(value)


def emit_json(args: argparse.Namespace, doc: dict) -> None:
    """``--json``: the command's one document, on the stdout ``main`` set aside (everything else went to stderr)."""
    print(json.dumps(jsonable(doc), indent=2, ensure_ascii=False, allow_nan=False),
          file=getattr(args, "stdout", None) or sys.stdout, flush=True)
