"""Stage ``train_router``: the prompt router that decides which prompts the aligned adapter answers.

Reads the base model's hidden state at the last prompt position of every ``train`` and ``val``
prompt (``components.route.router``), fits the router on ``train`` (harmful against benign; layer
by cross-validated AUROC, threshold at the cross-validated ``recall``), and scores it on ``val``,
which it was not fitted on. The prompts are ingest's pool (``data/ingest/pool.parquet``): with
``prompts: pool`` every train and val prompt before ingest's caps (round 26: 669 + 191 train, 188 + 65
val, against 89 + 100 and 31 + 48 capped), with ``prompts: capped`` only those the capped table
holds (round 25's router). Outputs ``router/`` (the ``PromptRouter``), ``metrics.json`` and
``summary.md``. ``evaluate`` answers each input with the adapter where the router routes it and
with the base model elsewhere (the ``<model>_routed`` rows). Test prompts are never read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from components.core import stage_cli, tracking
from components.core.config import require, stage_config
from components.core.errors import UserError
from components.core.io import read_table, write_json, write_text
from components.eval.stats import wilson
from components.route import router as router_lib
from components.lm import runtime
from components.lm import source

log = logging.getLogger("craft.train_router")
STAGE = "train_router"


@dataclass(frozen=True)
class TrainRouterConfig:
    """params.yaml:train_router."""

    prompts: str = "pool"
    """pool: fit on every train prompt before ingest's caps and score on every val one (test prompts
    are never in the pool); capped: only those of ingest's capped prompt table."""
    recall: float = 0.925
    """Share of harmful train prompts (cross-validated) the router must send to the adapter; in (0, 1].
    0.925 was chosen on val by the routed system's refusal − 2·over-refusal (docs/stage2.md round 27)."""
    c: float = 0.1
    """Inverse L2 strength of the logistic regression; > 0."""
    folds: int = 5
    """Cross-validation folds on the train prompts (layer choice and threshold); >= 2."""
    layers: tuple[int, ...] = ()
    """hidden_states indices to choose from (0 = embeddings); empty = every decoder layer's output."""
    batch_size: int = 16
    """Prompts per forward pass; >= 1."""
    seed: int = 0
    """Seed of the cross-validation split."""

    def __post_init__(self) -> None:
        require(self.prompts in ("pool", "capped"),
                f"train_router.prompts={self.prompts!r}: use pool (every train prompt before ingest's caps) or capped.")
        require(0 < self.recall <= 1, f"train_router.recall={self.recall!r}: use a share in (0, 1], e.g. 0.925.")
        require(self.c > 0, f"train_router.c={self.c!r}: use a positive value, e.g. 0.1.")
        require(self.folds >= 2, f"train_router.folds={self.folds!r}: use 2 or more, e.g. 5.")
        require(self.batch_size >= 1, f"train_router.batch_size={self.batch_size!r}: use 1 or more, e.g. 16.")


def split_rows(prompts: pd.DataFrame, split: str) -> pd.DataFrame:
    return prompts[prompts.split == split].sort_values("prompt_id").reset_index(drop=True)


NEEDED = ("prompt_id", "prompt", "prompt_kind", "split")


def prompt_rows(cfg: TrainRouterConfig, pool: pd.DataFrame) -> pd.DataFrame:
    """The rows ``cfg.prompts`` selects from ingest's pool; a table with test prompts or without the
    needed columns is refused (a table without ``capped`` counts as capped throughout)."""
    missing = [c for c in NEEDED if c not in pool.columns]
    if missing:
        raise UserError(f"train_router: the prompt table lacks column(s) {missing}; pass ingest's "
                        "data/ingest/pool.parquet (re-run `dvc repro ingest` if it is older than round 26).")
    if (pool.split == "test").any():
        raise UserError(f"train_router: the prompt table holds {int((pool.split == 'test').sum())} test prompts; pass "
                        "ingest's data/ingest/pool.parquet, which never does.")
    return pool[pool.capped] if cfg.prompts == "capped" and "capped" in pool else pool


def run(cfg: TrainRouterConfig, model_cfg: source.ModelConfig, pool: pd.DataFrame, out: Path,
        workspace: str = ".") -> dict:
    """Fit on train, score on val, save ``out/router``. Returns the metrics. ``pool``: ingest's
    pool.parquet (a table without a ``capped`` column counts as capped)."""
    prompts = prompt_rows(cfg, pool)
    train, val = split_rows(prompts, "train"), split_rows(prompts, "val")
    kinds = set(train.prompt_kind)
    require({"harmful", "benign"} <= kinds,
            f"train_router: the train split holds only {sorted(kinds)} prompts; it needs harmful and benign ones.")
    resolved = source.resolve(model_cfg, workspace)
    lm = runtime.load(resolved, model_cfg)
    n_layers = int(lm.model.config.num_hidden_layers)
    layers = list(cfg.layers) or list(range(1, n_layers + 1))
    require(all(-n_layers - 1 <= i <= n_layers for i in layers),
            f"train_router.layers={list(cfg.layers)!r}: use hidden_states indices in [0, {n_layers}].")
    states = router_lib.prompt_states(lm.model, lm.tokenizer, list(train.prompt), lm.device, layers, cfg.batch_size)
    y = torch.tensor((train.prompt_kind == "harmful").to_numpy().copy(), dtype=torch.long)
    router = router_lib.fit(states, y, layers, cfg.recall, cfg.c, cfg.folds, cfg.seed)
    router.info.update({"model_id": resolved.model_id, "model_fingerprint": resolved.fingerprint})
    router.save(out / "router")
    metrics = {"layer": router.layer, "prompts": cfg.prompts, "threshold": router.threshold,
               **{k: v for k, v in router.info.items() if isinstance(v, (int, float))}}
    if len(val):
        routes, scores = router_lib.route(router, lm.model, lm.tokenizer, list(val.prompt), lm.device, cfg.batch_size)
        harmful = (val.prompt_kind == "harmful").to_numpy().copy()
        on = torch.tensor(routes)
        metrics.update({"val_auroc": router_lib.auroc(torch.tensor(scores), torch.tensor(harmful).long()),
                        "val_harmful": int(harmful.sum()), "val_benign": int((~harmful).sum()),
                        "val_harmful_routed": int(on[harmful].sum()), "val_benign_routed": int(on[~harmful].sum())})
    return metrics


def summary(metrics: dict) -> str:
    lines = [f"# train_router\n\nThe router reads the base model's state at layer {metrics['layer']} (hidden_states "
             f"index), chosen by {metrics['folds']}-fold cross-validated AUROC {metrics['cv_auroc']:.3f} on "
             f"{metrics['train_harmful']} harmful and {metrics['train_benign']} benign train prompts. Its threshold "
             f"{metrics['threshold']:.3f} sends {metrics['cv_recall']:.1%} of the harmful train prompts (cross-validated; "
             f"target {metrics['recall_target']:.1%}) and {metrics['cv_false_positive_rate']:.1%} of the benign ones to "
             "the adapter."]
    if "val_auroc" in metrics:
        h = wilson(metrics["val_harmful_routed"], metrics["val_harmful"])
        b = wilson(metrics["val_benign_routed"], metrics["val_benign"])
        lines.append(f"\nOn the val prompts (never fitted on): AUROC {metrics['val_auroc']:.3f}; routed to the adapter: "
                     f"harmful {h}, benign {b} (Wilson 95% intervals).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--pool", True, "ingest's pool (data/ingest/pool.parquet)"),
        ("--out", True, "output folder (data/train_router)"),
    ])
    cfg = stage_config(TrainRouterConfig, STAGE, params)
    model_cfg = source.model_config(params)
    out = Path(args.out)
    with tracking.stage_run(STAGE, cfg, model_cfg):
        metrics = run(cfg, model_cfg, read_table(args.pool), out)
        write_json(out / "metrics.json", metrics)
        write_text(out / "summary.md", summary(metrics))
        tracking.log_stage_outputs(STAGE, metrics, [out / "summary.md", out / "router" / "router.json"])
    log.info("router: layer %d, val AUROC %.3f", metrics["layer"], metrics.get("val_auroc", float("nan")))
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
