"""Separation quality of a trained head, and the difference-of-means baseline (Arditi et al. 2024).

All metrics are on held-out rows (the ``val`` split) unless named ``train``:
- ``head/auroc``: AUROC of the head's latent score s = cos(z, μ_safe) − cos(z, μ_unsafe), safe vs unsafe;
- ``head/auroc_model_rows`` / ``head/auroc_template_rows``: the same AUROC on the model-written
  (``origin == "model"``) and the templated rows alone: templates are easy, model rows are the test;
  ``head/auroc_prefill_rows`` likewise on the rows the model wrote after a forced refusal opening
  (curate's ``refusal_prefills``), only when there are any;
- ``head/auroc_benign``: the over-refusal AUROC, the same score on benign prompts only: a helpful
  answer (safe) vs a refusal (unsafe, an over-refusal). NaN where a subset lacks either class;
- ``head/probe_auroc``: a logistic-regression probe fitted on train z, scored on val z;
- ``baseline/diffmeans_auroc``: raw activations projected on mean(h_safe) − mean(h_unsafe) (train);
- ``head/silhouette``: silhouette of val z by label (cosine distance);
- ``head/cos_<label>_to_<proto>``: mean cosine of each class to each prototype;
- ``head/confusion``: 3×3 confusion matrix of g(z) (rows = true label).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, roc_auc_score, silhouette_score

from components.core.io import save_figure
from components.head.model import LABEL_INDEX, SAFE, UNSAFE, SafetyHead
from components.data.records import LABELS


def _auroc(score: np.ndarray, is_safe: np.ndarray) -> float:
    return float(roc_auc_score(is_safe, score)) if 0 < is_safe.sum() < len(is_safe) else float("nan")


def diffmeans_direction(h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unit direction mean(h | safe) − mean(h | unsafe) over flattened activations [D]."""
    h = SafetyHead.flatten(h)
    d = h[labels == SAFE].mean(0) - h[labels == UNSAFE].mean(0)
    return d / d.norm().clamp(min=1e-8)


SUBSETS = {"head/auroc_model_rows": ("origin", "model"), "head/auroc_template_rows": ("origin", "template"),
           "head/auroc_benign": ("prompt_kind", "benign")}
"""Subset AUROC key → (column, value) of the val rows it keeps (extract's rows.parquet columns)."""
PREFILL = {"head/auroc_prefill_rows": ("origin", "prefill")}
"""Reported only when the val rows hold ``prefill`` rows (curate's ``refusal_prefills``)."""


def subset_aurocs(score: np.ndarray, y: np.ndarray, val_rows: pd.DataFrame | None) -> dict[str, float]:
    """Safe-vs-unsafe AUROC of ``score`` [N] on each ``SUBSETS`` slice of the val rows (``y`` [N]
    label ids, ``val_rows`` their N rows in order); NaN when a slice lacks a class or no rows are given."""
    out = {}
    prefill = val_rows is not None and "origin" in val_rows and (val_rows["origin"] == "prefill").any()
    for key, (column, value) in (SUBSETS | PREFILL if prefill else SUBSETS).items():
        if val_rows is None:
            out[key] = float("nan")
            continue
        keep = (val_rows[column].to_numpy() == value) & np.isin(y, [SAFE, UNSAFE])
        out[key] = _auroc(score[keep], (y[keep] == SAFE).astype(int))
    return out


@torch.no_grad()
def evaluate(head: SafetyHead, h_train, y_train, h_val, y_val, val_rows: pd.DataFrame | None = None) -> dict:
    """Metrics of the module docstring; tensors are [N, n_layers, d] features and [N] label ids.

    ``val_rows``: the N val rows (with ``origin`` and ``prompt_kind``) for the subset AUROCs."""
    head.eval()
    z_tr, _ = head(h_train)
    z_va, logits = head(h_val)
    cos = head.cosines(z_va).numpy()  # [N, 3]
    y = y_val.numpy()
    if val_rows is not None and len(val_rows) != len(y):
        raise ValueError(f"val_rows has {len(val_rows)} rows for {len(y)} val features.")
    score = cos[:, SAFE] - cos[:, UNSAFE]  # [N] latent safety score s
    binary = np.isin(y, [SAFE, UNSAFE])
    is_safe = (y[binary] == SAFE).astype(int)
    out = {"head/auroc": _auroc(score[binary], is_safe), **subset_aurocs(score, y, val_rows)}
    tr_bin = np.isin(y_train.numpy(), [SAFE, UNSAFE])
    if tr_bin.sum() and len(set(y_train.numpy()[tr_bin])) == 2:
        probe = LogisticRegression(max_iter=2000).fit(z_tr.numpy()[tr_bin], (y_train.numpy()[tr_bin] == SAFE))
        out["head/probe_auroc"] = _auroc(probe.decision_function(z_va.numpy()[binary]), is_safe)
        direction = diffmeans_direction(h_train, y_train)
        out["baseline/diffmeans_auroc"] = _auroc((SafetyHead.flatten(h_val) @ direction).numpy()[binary], is_safe)
    if len(set(y)) > 1 and len(y) > len(set(y)):
        out["head/silhouette"] = float(silhouette_score(z_va.numpy(), y, metric="cosine"))
    for name, c in LABEL_INDEX.items():
        if (y == c).any():
            for proto, p in LABEL_INDEX.items():
                out[f"head/cos_{name}_to_{proto}"] = float(cos[y == c, p].mean())
    pred = logits.argmax(-1).numpy()
    out["head/val_accuracy"] = float((pred == y).mean())
    out["head/confusion"] = confusion_matrix(y, pred, labels=list(range(len(LABELS)))).tolist()
    return out


def projection_plot(head: SafetyHead, h_train, y_train, h_val, y_val, path) -> None:
    """2-D PCA of z (fitted on train), train as dots, val as crosses, coloured by label → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        z_tr, z_va = head.embed(h_train), head.embed(h_val)
    mean = z_tr.mean(0)
    _, _, v = torch.pca_lowrank(z_tr - mean, q=2, center=False)  # v [D, 2]
    p_tr, p_va, p_mu = (z_tr - mean) @ v, (z_va - mean) @ v, (head.prototypes - mean) @ v
    colours = {"safe": "tab:green", "unsafe": "tab:red", "rethink": "tab:orange"}
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, c in LABEL_INDEX.items():
        ax.scatter(*p_tr[y_train == c].T.numpy(), s=14, alpha=0.5, c=colours[name], label=f"{name} (train)")
        ax.scatter(*p_va[y_val == c].T.numpy(), s=30, marker="x", c=colours[name], label=f"{name} (val)")
        ax.scatter(*p_mu[c].numpy(), s=220, marker="*", edgecolors="black", c=colours[name])
    ax.set_title("CRAFT head embeddings (PCA of z; stars = prototypes)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
