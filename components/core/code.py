"""The code a module runs: its import closure inside ``components``, and a digest of it.

Used twice, so the two can never disagree: tests check that each stage's dvc.yaml deps cover
the closure of its module, and the RL checkpoint key hashes the same closure (a stage that DVC
re-runs for changed code trains afresh instead of resuming checkpoints of the old code).
Imports are read from the source (every ``import``/``from`` statement, function-level ones
included), not executed, so nothing is imported as a side effect.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT_PACKAGE = "components"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # …/components


def module_file(name: str) -> Path | None:
    """``components.lm.decode`` → its .py (or the package's ``__init__.py``); None if not ours."""
    parts = name.split(".")
    if parts[0] != ROOT_PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name an import in ``path`` may load (``from a import b``: a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(module: str) -> list[Path]:
    """Sorted files of ``components`` that importing (and running) ``module`` may execute."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        for name in _with_parents(todo.pop()):
            path = module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(_imported_names(path))
    return sorted(seen)


def closure_digest(module: str) -> str:
    """sha256 over the closure's relative paths and contents (16 hex digits)."""
    h = hashlib.sha256()
    for path in import_closure(module):
        h.update(path.relative_to(PACKAGE_DIR.parent).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
