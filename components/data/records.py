"""Named records of the pair dataset and its on-disk schema.

The pair dataset is a long table with one row per reasoning trace (a ``Trace``). Rows that share
a ``prompt_id`` form the prompt's contrast set: for a harmful prompt at least one ``safe`` and one
``unsafe`` trace (the *pair*), usually a ``rethink`` trace too. ``PromptPair`` is that view.

Columns (all required; see docs/dataset-schema.md):

================  ======  ==========================================================
column            type    meaning
================  ======  ==========================================================
trace_id          str     unique id of the row (stable hash of prompt_id, label, origin, k)
prompt_id         str     stable hash of the normalised prompt text
prompt            str     the user prompt as shown to the model
prompt_kind       str     ``harmful`` or ``benign``
trace             str     the reasoning trace (text inside <think>…</think>, else the completion)
response          str     the final answer (text after </think>, else the completion)
label             str     ``safe`` | ``unsafe`` | ``rethink``
origin            str     ``model`` (sampled, judge-labelled), ``prefill`` (the model continues a
                          forced refusal opening, judge-labelled) or ``template``
source            str     prompt set the prompt came from (``harmbench``, ``aplomb``…)
category          str     harm or topic category from the source (``unknown`` if none)
split             str     ``train`` | ``val`` (``test`` prompts are held out for evaluation)
p_safe            float   judge probability that the response is safe, in [0, 1]
judge             str     name of the judge that produced ``p_safe``
model_id          str     model that produced the trace (``template`` for templates)
================  ======  ==========================================================
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from dataclasses import dataclass

LABELS = ("safe", "unsafe", "rethink")
PROMPT_KINDS = ("harmful", "benign")
ORIGINS = ("model", "prefill", "template")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prompt:
    """One ingested prompt with its held-out split."""

    prompt_id: str
    prompt: str
    prompt_kind: str
    source: str
    category: str
    split: str
    reference: str = ""
    """A reference answer when the source ships one (used for utility), else empty."""


@dataclass(frozen=True)
class Trace:
    """One row of the pair dataset (see the module docstring for each field)."""

    trace_id: str
    prompt_id: str
    prompt: str
    prompt_kind: str
    trace: str
    response: str
    label: str
    origin: str
    source: str
    category: str
    split: str
    p_safe: float
    judge: str
    model_id: str


@dataclass(frozen=True)
class PromptPair:
    """The contrast set of one harmful prompt: ids of its safe, unsafe and rethink traces."""

    prompt_id: str
    prompt: str
    safe_trace_ids: tuple[str, ...]
    unsafe_trace_ids: tuple[str, ...]
    rethink_trace_ids: tuple[str, ...]


PROMPT_COLUMNS = tuple(f.name for f in dataclasses.fields(Prompt))
TRACE_COLUMNS = tuple(f.name for f in dataclasses.fields(Trace))
STRING_COLUMNS = tuple(c for c in TRACE_COLUMNS if c != "p_safe")
TRACE_TYPES: dict[str, type] = {c: float if c == "p_safe" else str for c in TRACE_COLUMNS}
"""Column → Python type of the pair dataset (for ``core.io.read_table(path, TRACE_TYPES)``)."""

_SPACE = re.compile(r"\s+")

_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
"""Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties.txt): code points that render
as nothing — zero-width spaces/joiners, bidi controls, soft hyphen, variation selectors, tags,
Hangul fillers. Together with category Cf (format characters) they are dropped from identity."""


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return unicodedata.category(ch) == "Cf" or any(lo <= cp <= hi for lo, hi in _INVISIBLE_RANGES)


def strip_invisible(text: str) -> str:
    """``text`` without invisible and format characters (Cf, default-ignorables); else unchanged."""
    if text.isascii():  # fast path: no ASCII character is invisible in this sense
        return text
    return "".join(ch for ch in text if not _invisible(ch))


def normalise(text: str) -> str:
    """Canonical form used for de-duplication and leakage checks.

    Invisible/format characters are dropped (before NFKC, so ``e`` + U+200B + U+0301 composes like
    ``é``, and after, in case a compatibility mapping yields one), then NFKC, casefold, runs of
    whitespace become one space, ends are stripped of spaces and ``.?!``. Text without invisible
    characters normalises exactly as before they were dropped, so existing prompt ids are stable.
    """
    text = strip_invisible(unicodedata.normalize("NFKC", strip_invisible(text)).casefold())
    return _SPACE.sub(" ", text).strip().rstrip(".?!")


def stable_id(*parts: object, length: int = 16) -> str:
    """A short, stable hex id from the parts (sha256; not a security boundary)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:length]


def prompt_id(text: str) -> str:
    """The id of a prompt: hash of its normalised text, so duplicates collide on purpose."""
    return stable_id(normalise(text), length=12)


def pairs(traces: "list[Trace]") -> list[PromptPair]:
    """Group harmful-prompt traces into PromptPair records (prompts lacking a pair are kept)."""
    by_prompt: dict[str, list[Trace]] = {}
    for t in traces:
        if t.prompt_kind == "harmful":
            by_prompt.setdefault(t.prompt_id, []).append(t)
    out = []
    for pid, rows in sorted(by_prompt.items()):
        ids = {lab: tuple(r.trace_id for r in rows if r.label == lab) for lab in LABELS}
        out.append(PromptPair(pid, rows[0].prompt, ids["safe"], ids["unsafe"], ids["rethink"]))
    return out
