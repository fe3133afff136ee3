"""Stage ``ingest``: read harmful and benign prompt sets, de-duplicate, split by prompt, cap.

Splits are assigned from the hash of the normalised prompt, not from a shuffle: a prompt keeps
its split when sources grow, so a new dataset version never moves a test prompt into training.
Caps apply per pool after the split, each drawn round-robin over sources so small sources are
not drowned: ``max_harmful``/``max_benign`` bound the training pool (what curation, SFT and RL may
see: ``train``, plus ``val`` when that kind has no val cap), ``max_val_harmful``/``max_val_benign``
(when set) the ``val`` split on its own (RL's checkpoint selection reads it: a val set sized on
purpose, not by the share that falls to it from a train + val cap), and
``max_test_harmful``/``max_test_benign`` the held-out evaluation set.

Outputs: ``prompts.parquet`` (the capped table every stage reads), ``pool.parquet`` (every ``train``
and ``val`` prompt before the caps, never a ``test`` one: what the prompt router fits and is scored
on with ``train_router.prompts: pool``), ``metrics.json`` and ``summary.md``.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.core import datasets, stage_cli
from components.core import tracking
from components.core.config import require, stage_config
from components.core.io import write_json, write_table, write_text
from components.data.sources import read_source
from components.data.sources import DEFAULT_SOURCES
from components.data.records import PROMPT_COLUMNS, Prompt, normalise, prompt_id, stable_id

log = logging.getLogger("craft.ingest")
STAGE = "ingest"


@dataclass(frozen=True)
class IngestConfig:
    """params.yaml:ingest."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    """Named packaged prompt sets, or ``file:PATH`` for your own (prompt, prompt_kind columns)."""
    max_harmful: int = 120
    """Cap on harmful train (+ val, unless ``max_val_harmful`` is set) prompts (round-robin over
    sources, deterministic by seed); >= 1."""
    max_benign: int = 100
    """Cap on benign train (+ val, unless ``max_val_benign`` is set) prompts; >= 0 (0 keeps none
    of that pool)."""
    max_val_harmful: int | None = None
    """Cap on harmful ``val`` prompts, drawn apart from ``train`` (``max_harmful`` then bounds
    ``train`` alone); None = val shares ``max_harmful`` with train; >= 1."""
    max_val_benign: int | None = 48
    """Cap on benign ``val`` prompts, drawn apart from ``train`` (``max_benign`` then bounds
    ``train`` alone): the benign set RL's checkpoint selection measures over-refusal on; None = val
    shares ``max_benign`` with train; >= 0."""
    max_test_harmful: int = 160
    """Cap on held-out harmful test prompts (evaluation); >= 1."""
    max_test_benign: int = 120
    """Cap on held-out benign test prompts (over-refusal); >= 0."""
    val_fraction: float = 0.15
    """Share of prompts put in ``val`` (by prompt hash), in [0, 1); val + test must be < 1."""
    test_fraction: float = 0.3
    """Share of prompts held out for evaluation, in (0, 1); never used by curation or RL."""
    min_chars: int = 8
    """Prompts shorter than this many characters are dropped; >= 1."""
    max_chars: int = 2000
    """Prompts longer than this many characters are dropped; > min_chars."""
    seed: int = 0
    """Seed of the capping draw (splits come from prompt hashes, not from the seed)."""

    def __post_init__(self) -> None:
        require(len(self.sources) > 0, "ingest.sources is empty: name at least one prompt source.")
        require(self.max_harmful > 0, f"ingest.max_harmful={self.max_harmful!r}: use 1 or more, e.g. 120.")
        require(self.max_benign >= 0, f"ingest.max_benign={self.max_benign!r}: use 0 or more, e.g. 100.")
        require(self.max_val_harmful is None or self.max_val_harmful > 0,
                f"ingest.max_val_harmful={self.max_val_harmful!r}: use 1 or more (e.g. 32), or null to share "
                "max_harmful with train.")
        require(self.max_val_benign is None or self.max_val_benign >= 0,
                f"ingest.max_val_benign={self.max_val_benign!r}: use 0 or more (e.g. 48), or null to share "
                "max_benign with train.")
        require(self.max_test_harmful > 0,
                f"ingest.max_test_harmful={self.max_test_harmful!r}: use 1 or more, e.g. 160.")
        require(self.max_test_benign >= 0,
                f"ingest.max_test_benign={self.max_test_benign!r}: use 0 or more, e.g. 120.")
        require(0 <= self.val_fraction < 1,
                f"ingest.val_fraction={self.val_fraction!r}: use a share in [0, 1), e.g. 0.15.")
        require(0 < self.test_fraction < 1,
                f"ingest.test_fraction={self.test_fraction!r}: use a share in (0, 1), e.g. 0.25 "
                "(evaluation needs held-out prompts).")
        require(self.val_fraction + self.test_fraction < 1,
                f"ingest.val_fraction={self.val_fraction!r} + test_fraction={self.test_fraction!r} >= 1: "
                "lower one of them so some prompts are left for training.")
        require(self.min_chars > 0, f"ingest.min_chars={self.min_chars!r}: use 1 or more, e.g. 8.")
        require(self.min_chars < self.max_chars,
                f"ingest.max_chars={self.max_chars!r} is not above min_chars={self.min_chars!r}: "
                "raise max_chars (e.g. 2000) or lower min_chars.")


def split_of(pid: str, cfg: IngestConfig) -> str:
    """Deterministic split from the prompt id: u = int(hash)/16^k ∈ [0, 1)."""
    u = int(stable_id("split", pid, length=8), 16) / 16**8
    if u < cfg.test_fraction:
        return "test"
    return "val" if u < cfg.test_fraction + cfg.val_fraction else "train"


def _cap(prompts: list[Prompt], limit: int, seed: int) -> list[Prompt]:
    """Keep ``limit`` prompts, round-robin over sources so small sources are not drowned."""
    by_source: dict[str, list[Prompt]] = {}
    for p in sorted(prompts, key=lambda p: stable_id(seed, p.prompt_id)):
        by_source.setdefault(p.source, []).append(p)
    kept: list[Prompt] = []
    queues = [by_source[s] for s in sorted(by_source)]
    while len(kept) < limit and any(queues):
        for q in queues:
            if q and len(kept) < limit:
                kept.append(q.pop(0))
    return kept


def _pools(train_cap: int, val_cap: int | None, test_cap: int) -> list[tuple[tuple[str, ...], int]]:
    """(splits drawn together, their cap): train + val under one cap unless val has its own."""
    if val_cap is None:
        return [(("train", "val"), train_cap), (("test",), test_cap)]
    return [(("train",), train_cap), (("val",), val_cap), (("test",), test_cap)]


def run(cfg: IngestConfig) -> tuple[pd.DataFrame, dict]:
    """Read, clean, de-duplicate, cap and split. Returns the prompt table and its stats."""
    df, _, stats = run_with_pool(cfg)
    return df, stats


def run_with_pool(cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``run``'s prompt table and stats, and the pool: every ``train`` and ``val`` prompt before the
    caps (never a ``test`` one), with ``capped`` True where the prompt table holds it too. Only the
    prompt router fits on more than the capped table (``train_router.prompts: pool``)."""
    seen, read_stats = _read(cfg)
    df = pd.DataFrame([p.__dict__ for p in _split_and_cap(seen, cfg)], columns=list(PROMPT_COLUMNS))
    assert df["prompt"].map(normalise).is_unique
    held = [p for p in sorted(seen.values(), key=lambda p: p.prompt_id) if p.split != "test"]
    pool = pd.DataFrame([p.__dict__ for p in held], columns=list(PROMPT_COLUMNS))
    pool["capped"] = pool.prompt_id.isin(set(df.prompt_id))
    stats = dict(read_stats, kept=len(df), **_counts(df, ""), **_counts(pool, "pool_"))
    return df, pool, stats


def _counts(df: pd.DataFrame, prefix: str) -> dict[str, int]:
    """{prefix + kind_split: prompts} of a prompt table."""
    return {f"{prefix}{kind}_{split}": int(n) for (kind, split), n in df.groupby(["prompt_kind", "split"]).size().items()}


def _read(cfg: IngestConfig) -> tuple[dict[str, Prompt], Counter]:
    """Every source prompt within the length bounds, de-duplicated, with its split: {prompt id: prompt}."""
    seen: dict[str, Prompt] = {}
    stats: Counter = Counter()
    for name in cfg.sources:
        for raw in read_source(name):
            stats["read"] += 1
            if not cfg.min_chars <= len(raw.text) <= cfg.max_chars:
                stats["dropped_length"] += 1
                continue
            pid = prompt_id(raw.text)
            if pid in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen[pid] = Prompt(pid, raw.text, raw.prompt_kind, raw.source, raw.category,
                               split_of(pid, cfg), raw.reference)
    return seen, stats


def _split_and_cap(seen: dict[str, Prompt], cfg: IngestConfig) -> list[Prompt]:
    """The capped table's prompts: per kind, each pool of splits (``_pools``) drawn to its cap."""
    rows: list[Prompt] = []
    for kind, train_cap, val_cap, test_cap in (
            ("harmful", cfg.max_harmful, cfg.max_val_harmful, cfg.max_test_harmful),
            ("benign", cfg.max_benign, cfg.max_val_benign, cfg.max_test_benign)):
        pool = [p for p in seen.values() if p.prompt_kind == kind]
        for splits, cap in _pools(train_cap, val_cap, test_cap):
            rows += _cap([p for p in pool if p.split in splits], cap, cfg.seed)
    return rows


def summary_markdown(df: pd.DataFrame, stats: dict) -> str:
    table = df.groupby(["prompt_kind", "source", "split"]).size().unstack(fill_value=0)
    return (f"# ingest\n\nRead {stats['read']} prompts, kept {stats['kept']} "
            f"({stats.get('dropped_duplicate', 0)} duplicates, {stats.get('dropped_length', 0)} "
            f"out of length bounds dropped).\n\n{table.to_markdown()}\n")


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--out", True, "output folder (data/ingest)"),
    ])
    cfg = stage_config(IngestConfig, STAGE, params)
    with tracking.stage_run(STAGE, cfg):
        df, pool, stats = run_with_pool(cfg)
        out = Path(args.out)
        write_table(out / "prompts.parquet", df)
        write_table(out / "pool.parquet", pool)
        datasets.log_splits(df, out / "prompts.parquet", "prompts")
        write_json(out / "metrics.json", stats)
        write_text(out / "summary.md", summary_markdown(df, stats))
        tracking.log_stage_outputs(STAGE, stats, [out / "summary.md"])
    log.info("wrote %d prompts to %s", len(df), out)
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
