"""Stage ``train_head``: fit the CRAFT projection + safety head on extracted hidden states.

AdamW over the head only (the base model stays frozen: its states were extracted once), CRAFT
loss (``components.head.loss``), EMA prototypes, early stopping on the validation loss. Reports
separation quality next to the difference-of-means baseline on the same activations, and the same
AUROC on model-written rows, on templated rows and on benign prompts only (over-refusal: an answer
is safe there, a refusal unsafe; ``components.head.metrics``). The head's ``safe`` class is the
right behaviour for the prompt (``components.curate``), so the features pool the prompt too
(``extract.pool_over: all``) and the head stores that spec for RL and audit.
Departures from the paper: input standardisation (see ``SafetyHead``); prototypes start at the
class means of the untrained embeddings rather than random directions; more epochs with early
stopping because our datasets are small.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from components.lm import features
from components.head import metrics as head_metrics
from components.core import stage_cli
from components.core import tracking
from components.core.config import require, stage_config
from components.head.model import LABEL_INDEX, SafetyHead
from components.head.loss import LossWeights, craft_loss
from components.core.io import write_json, write_text

log = logging.getLogger("craft.train_head")
STAGE = "train_head"


@dataclass(frozen=True)
class TrainHeadConfig:
    """params.yaml:train_head."""

    hidden_dim: int = 1024
    """Width of the head's hidden layer; > 0."""
    out_dim: int = 512
    """Dimension of the embedding z compared with the prototypes; > 0."""
    lr: float = 1e-4
    """AdamW learning rate of the head; > 0."""
    weight_decay: float = 0.01
    """AdamW weight decay of the head."""
    epochs: int = 30
    """Upper bound; early stopping usually ends sooner. >= 1."""
    batch_size: int = 16
    """Rows per training batch; >= 2 (the contrastive terms compare rows)."""
    patience: int = 5
    """Epochs without a better validation loss before stopping."""
    ema: float = 0.98
    """Prototype EMA momentum m: μ ← m·μ + (1−m)·batch mean; in [0, 1)."""
    queue_size: int = 4096
    """InfoNCE negative queue length."""
    w_proto: float = 1.0
    """Weight of L_proto, the prototype triplet loss (components/head/loss.py)."""
    w_inst: float = 0.5
    """Weight of L_inst, the InfoNCE instance loss."""
    w_ce: float = 1.0
    """Weight of L_CE, the 3-way safe / unsafe / rethink cross-entropy."""
    w_order: float = 0.3
    """Weight of L_order, which keeps rethink rows between safe and unsafe."""
    margin: float = 0.2
    """Margin δ of L_proto and L_order, in cosine-similarity units; >= 0."""
    temperature: float = 0.1
    """InfoNCE temperature τ; > 0."""
    seed: int = 0
    """Seed of the head's initialisation and the batch order."""

    def __post_init__(self) -> None:
        require(self.hidden_dim > 0, f"train_head.hidden_dim={self.hidden_dim!r}: use a positive width, e.g. 1024.")
        require(self.out_dim > 0, f"train_head.out_dim={self.out_dim!r}: use a positive width, e.g. 512.")
        require(self.lr > 0, f"train_head.lr={self.lr!r}: use a positive learning rate, e.g. 0.0001.")
        require(self.epochs >= 1, f"train_head.epochs={self.epochs!r}: use 1 or more, e.g. 30.")
        require(self.batch_size >= 2,
                f"train_head.batch_size={self.batch_size!r}: use 2 or more (the contrastive terms compare "
                "rows), e.g. 16.")
        require(0 <= self.ema < 1, f"train_head.ema={self.ema!r}: use a momentum in [0, 1), e.g. 0.98.")
        require(self.temperature > 0, f"train_head.temperature={self.temperature!r}: use a positive value, e.g. 0.1.")
        require(self.margin >= 0, f"train_head.margin={self.margin!r}: use 0 or more, e.g. 0.2.")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.w_proto, self.w_inst, self.w_ce, self.w_order, self.margin, self.temperature)


def _split(feats: features.Features, split: str):
    sel = torch.tensor((feats.rows.split == split).to_numpy())
    y = torch.tensor(feats.rows.label.map(LABEL_INDEX).to_numpy())[sel]
    return feats.h[sel], feats.h_aug[sel], y


def _epoch(head, opt, h, h_aug, y, cfg, queue, gen) -> tuple[dict, tuple]:
    """One pass over the training rows; ``queue`` = (embeddings [Q, D], their row ids [Q])."""
    head.train()
    q, q_ids = queue
    sums: dict[str, float] = {}
    perm = torch.randperm(len(y), generator=gen)
    for start in range(0, len(y), cfg.batch_size):
        idx = perm[start : start + cfg.batch_size]
        if len(idx) < 2:
            continue
        z, logits = head(h[idx])
        z_pos = head.embed(h_aug[idx])
        terms = craft_loss(z, z_pos, logits, y[idx], head.prototypes, q, cfg.weights, idx, q_ids)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        head.update_prototypes(z.detach(), y[idx], cfg.ema)
        q = torch.cat([z_pos.detach(), q])[: cfg.queue_size]
        q_ids = torch.cat([idx, q_ids])[: cfg.queue_size]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
    return {k: v / len(y) for k, v in sums.items()}, (q, q_ids)


@torch.no_grad()
def _val_loss(head, h, h_aug, y, cfg) -> float:
    head.eval()
    z, logits = head(h)
    return float(craft_loss(z, head.embed(h_aug), logits, y, head.prototypes, None, cfg.weights)["total"])


def train(cfg: TrainHeadConfig, feats: features.Features) -> tuple[SafetyHead, list[dict]]:
    """Fit a head; returns the best-on-validation head and the per-epoch history."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    h_tr, a_tr, y_tr = _split(feats, "train")
    h_va, a_va, y_va = _split(feats, "val")
    require(len(y_tr) >= 2, "train_head: fewer than 2 training rows; curate more data.")
    head = SafetyHead(SafetyHead.flatten(h_tr).shape[1], cfg.hidden_dim, cfg.out_dim, feats.spec)
    head.set_input_stats(h_tr)
    with torch.no_grad():
        head.init_prototypes(head.embed(h_tr), y_tr)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    queue = (torch.empty(0, cfg.out_dim), torch.empty(0, dtype=torch.long))
    best, best_loss, stale, history = copy.deepcopy(head.state_dict()), float("inf"), 0, []
    for epoch in range(cfg.epochs):
        terms, queue = _epoch(head, opt, h_tr, a_tr, y_tr, cfg, queue, gen)
        val = _val_loss(head, h_va, a_va, y_va, cfg) if len(y_va) else terms["total"]
        history.append({"epoch": epoch, **{f"train_{k}": v for k, v in terms.items()}, "val_total": val})
        log.info("epoch %d train %.4f val %.4f", epoch, terms["total"], val)
        if val < best_loss - 1e-4:
            best, best_loss, stale = copy.deepcopy(head.state_dict()), val, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    head.load_state_dict(best)
    return head.eval(), history


def _any_nan(m: dict) -> bool:
    """Whether an AUROC is undefined (a subset lacked one of its two classes)."""
    return any(isinstance(v, float) and v != v for k, v in m.items() if "auroc" in k)


def summary_markdown(m: dict, history: list[dict]) -> str:
    rows = [f"| {k} | {v:.3f} |" for k, v in m.items() if isinstance(v, float)]
    conf = "\n".join(f"| {lab} | " + " | ".join(str(x) for x in row) + " |"
                     for lab, row in zip(LABEL_INDEX, m.get("head/confusion", [])))
    return (f"# train_head\n\n{len(history)} epochs. Safe-vs-unsafe AUROC on held-out traces: CRAFT head "
            f"{m.get('head/auroc', float('nan')):.3f}, difference-of-means baseline "
            f"{m.get('baseline/diffmeans_auroc', float('nan')):.3f}. On model-written rows "
            f"{m.get('head/auroc_model_rows', float('nan')):.3f}, on templated rows "
            f"{m.get('head/auroc_template_rows', float('nan')):.3f}; over-refusal AUROC (benign prompts: "
            f"answer vs refusal or deflection) {m.get('head/auroc_benign', float('nan')):.3f}"
            f"{' (nan: a class is missing in that subset)' if _any_nan(m) else ''}."
            "\n\n| metric | value |\n|---|---|\n"
            + "\n".join(rows) + "\n\n## Confusion (rows = true, cols = predicted: safe, unsafe, rethink)\n\n"
            "| | safe | unsafe | rethink |\n|---|---|---|---|\n" + conf + "\n\n![projection](projection.png)\n")


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--features", True, "extract output (data/extract)"),
        ("--out", True, "output folder (data/train_head)"),
    ])
    cfg = stage_config(TrainHeadConfig, STAGE, params)
    out = Path(args.out)
    with tracking.stage_run(STAGE, cfg):
        feats = features.load(args.features)
        head, history = train(cfg, feats)
        curves = [{"epoch": row["epoch"], **{f"head/{k}": v for k, v in row.items() if k != "epoch"}}
                  for row in history]  # the names MLflow records; DVC plots read the same file
        for row in curves:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        write_json(out / "history.json", curves)
        h_tr, _, y_tr = _split(feats, "train")
        h_va, _, y_va = _split(feats, "val")
        val_rows = feats.rows[(feats.rows.split == "val").to_numpy()]  # the rows of h_va, in order
        metrics = head_metrics.evaluate(head, h_tr, y_tr, h_va, y_va, val_rows)
        head.save(out / "head", extra={"model_id": feats.manifest["model_id"],
                                       "model_fingerprint": feats.manifest["model_fingerprint"]})
        head_metrics.projection_plot(head, h_tr, y_tr, h_va, y_va, out / "projection.png")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}  # MLflow's names
        write_json(out / "metrics.json", {**scalars, "epochs": len(history), "confusion": metrics["head/confusion"]})
        write_text(out / "summary.md", summary_markdown(metrics, history))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and v == v})
        mlflow.log_dict({"confusion": metrics["head/confusion"]}, "confusion.json")
        for f in ("projection.png", "summary.md", "head/head.json", "head/head.safetensors"):
            mlflow.log_artifact(str(out / f))
    log.info("head AUROC %.3f (diff-of-means %.3f; model rows %.3f, over-refusal %.3f)",
             metrics.get("head/auroc", float("nan")), metrics.get("baseline/diffmeans_auroc", float("nan")),
             metrics["head/auroc_model_rows"], metrics["head/auroc_benign"])
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
