"""Stage ``extract``: pooled hidden states of every trace, streamed to safetensors shards.

For each pair-dataset row the frozen model encodes render(prompt) + trace (``components.lm.latents``)
and, for the InfoNCE positive, the same trace with ``word_dropout`` of its words removed. Shards
of ``shard_rows`` rows keep memory bounded; ``rows.parquet`` maps shard rows to trace ids and
labels; ``manifest.json`` records model, layers, pooling, dtype and hidden size.
Files: shards/shard-NNNNN.safetensors with tensors ``h`` and ``h_aug`` of shape [n, n_layers, d].
Under ``accelerate launch --multi_gpu --num_processes N`` process k encodes batches k, k + N, …;
the main process gathers each round of N batches and alone writes the cache and opens the MLflow
run, so the files equal one process's (same batches, same order).
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from components.lm import source
from components.lm import runtime
from components.core import dist
from components.core import stage_cli
from components.core import tracking
from components.core.config import require, stage_config
from components.core.io import read_table, write_json, write_table, write_text
from components.lm import features
from components.lm.latents import POOL_OVER, POOLINGS, LatentSpec, encode

log = logging.getLogger("craft.extract")
STAGE = "extract"
ROW_COLUMNS = ["trace_id", "prompt_id", "label", "split", "prompt_kind", "origin"]


@dataclass(frozen=True)
class ExtractConfig:
    """params.yaml:extract."""

    layers: tuple[int, ...] = (-1,)
    """Hidden-state indices (0 = embeddings, -1 = last layer); at least one."""
    pooling: str = "mean"
    """mean over the pooled span (paper), last token or max."""
    pool_over: str = "all"
    """Pool the prompt too (``all``), so the head can tell a right refusal (harmful prompt) from an
    over-refusal (benign prompt), or the trace tokens only (``completion``)."""
    max_length: int = 512
    """Tokens per prompt + trace input; longer inputs are truncated."""
    batch_size: int = 16
    """Rows encoded per forward pass; >= 1 and <= shard_rows."""
    shard_rows: int = 4096
    """Rows per safetensors shard (bounds memory for large datasets); >= batch_size."""
    word_dropout: float = 0.05
    """Share of words dropped to make the InfoNCE positive view; in [0, 0.5)."""
    storage_dtype: str = "float32"
    """dtype of the stored latents: float32 | float16 | bfloat16."""
    seed: int = 0
    """Seed of the word-dropout draw for the positive views."""

    def __post_init__(self) -> None:
        require(self.pooling in POOLINGS, f"extract.pooling={self.pooling!r}: use one of {POOLINGS}.")
        require(self.pool_over in POOL_OVER, f"extract.pool_over={self.pool_over!r}: use one of {POOL_OVER}.")
        require(len(self.layers) > 0, "extract.layers is empty: use [-1] for the last layer.")
        require(self.batch_size >= 1, f"extract.batch_size={self.batch_size!r}: use 1 or more, e.g. 16.")
        require(self.shard_rows >= self.batch_size,
                f"extract.shard_rows={self.shard_rows!r} is below batch_size={self.batch_size!r}: "
                "raise shard_rows (e.g. 4096) or lower batch_size.")
        require(0 <= self.word_dropout < 0.5,
                f"extract.word_dropout={self.word_dropout!r}: use a share in [0, 0.5), e.g. 0.05.")
        require(self.storage_dtype in ("float32", "float16", "bfloat16"),
                f"extract.storage_dtype={self.storage_dtype!r}: use float32, float16 or bfloat16.")

    @property
    def spec(self) -> LatentSpec:
        return LatentSpec(self.layers, self.pooling, self.pool_over, self.max_length)


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """The positive view: each word dropped with probability p (at least one word kept)."""
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept or words[:1])


def run(cfg: ExtractConfig, model_cfg: source.ModelConfig, traces: pd.DataFrame,
        out: Path, workspace: str = ".") -> dict | None:
    """Encode every row, writing shards as they fill. Returns the manifest (None on processes other
    than the main one, which alone writes)."""
    procs = dist.state(runtime.pick_device(model_cfg.device))  # first: each process's device
    with procs.main_process_first():  # a packaged model is converted once, by the main process
        resolved = source.resolve(model_cfg, workspace)
    lm = runtime.load(resolved, model_cfg)
    rng = random.Random(cfg.seed)
    rows = traces.reset_index(drop=True)
    aug = [drop_words(t, cfg.word_dropout, rng) for t in rows.trace]  # row order: one process's draws
    starts = range(0, len(rows), cfg.batch_size)
    main, n, rank = procs.is_main_process, procs.num_processes, procs.process_index
    writer = features.ShardWriter(out, cfg.shard_rows, getattr(torch, cfg.storage_dtype)) if main else None
    bar = tqdm(total=len(rows), desc="extract", unit="trace", leave=False, **({} if main else {"disable": True}))
    for round_ in range(0, len(starts), n):  # one batch per process per round
        mine = starts[round_ + rank] if round_ + rank < len(starts) else None
        done = None
        if mine is not None:
            chunk = rows.iloc[mine : mine + cfg.batch_size]
            prompts, texts = list(chunk.prompt), list(chunk.trace)
            done = (encode(lm.model, lm.tokenizer, prompts, texts, cfg.spec, lm.device),  # [b, L, d]
                    encode(lm.model, lm.tokenizer, prompts, aug[mine : mine + len(chunk)], cfg.spec, lm.device))
            done = tuple(t.cpu() for t in done) if n > 1 else done  # they travel pickled
        for pair in dist.gather(done):  # rank order = batch order
            if main and pair is not None:
                writer.add(*pair)
                bar.update(len(pair[0]))
    bar.close()
    if not main:
        return None
    writer.flush()
    write_table(out / "rows.parquet", rows[ROW_COLUMNS])
    manifest = {"model_id": resolved.model_id, "model_fingerprint": resolved.fingerprint,
                "spec": asdict(cfg.spec), "storage_dtype": cfg.storage_dtype, "rows": len(rows),
                "hidden_size": int(lm.model.config.hidden_size), "shards": writer.shards}
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--data", True, "pair dataset (data/curate/traces.parquet)"),
        ("--validation", False, "validate's result.json (data/validate/result.json): refuse unless it passed"),
        ("--out", True, "output folder (data/extract)"),
    ])
    if args.validation:
        stage_cli.require_validated(args.validation)
    cfg = stage_config(ExtractConfig, STAGE, params)
    model_cfg = source.model_config(params)
    procs = dist.state(runtime.pick_device(model_cfg.device))
    # One MLflow run per stage: only the main process opens it (run() returns None elsewhere).
    with tracking.stage_run(STAGE, cfg, model_cfg) if procs.is_main_process else contextlib.nullcontext():
        manifest = run(cfg, model_cfg, read_table(args.data), Path(args.out))
        if manifest is not None:
            _report(cfg, manifest, Path(args.out))
    procs.wait_for_everyone()  # the other processes exit once the main one has written everything
    return 0


def _report(cfg: ExtractConfig, manifest: dict, out: Path) -> None:
    """metrics.json, summary.md and the MLflow metrics of a finished extraction."""
    metrics = {"rows": manifest["rows"], "hidden_size": manifest["hidden_size"], "shards": len(manifest["shards"])}
    write_json(out / "metrics.json", metrics)
    write_text(out / "summary.md",
               f"# extract\n\n{manifest['rows']} traces encoded by {manifest['model_id']} "
               f"(layers {list(cfg.layers)}, {cfg.pooling} pooling over "
               f"{'prompt + trace' if cfg.pool_over == 'all' else 'the trace'}, "
               f"d={manifest['hidden_size']}) into {len(manifest['shards'])} shard(s).\n")
    tracking.log_stage_outputs(STAGE, metrics, [out / "manifest.json"])


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
