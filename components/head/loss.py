"""The CRAFT stage-1 loss (paper §4.1) over a batch of embeddings z = f(h).

    L = w_proto·L_proto + w_inst·L_inst + w_ce·L_CE + w_order·L_order

- L_proto (prototype triplet, margin δ): for safe z, ReLU(δ − cos(z, μ_safe) + cos(z, μ_unsafe));
  for unsafe z the mirror image. Mean over safe and unsafe rows.
- L_inst (InfoNCE, temperature τ): anchor z_i, positive z⁺_i = f(h_i with ~5% words dropped),
  negatives = other positives in the batch + a FIFO queue of past detached embeddings.
- L_CE: 3-way cross-entropy of g(z).
- L_order (our formulation; the paper gives no formula): with s(z) = cos(z, μ_safe) − cos(z, μ_unsafe),
  rethink rows sit between the classes by the same margin: s_unsafe + δ ≤ s_rethink ≤ s_safe − δ,
  using batch means of s for the safe and unsafe rows.
Prototypes are constants here (EMA-updated outside the gradient), as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.head.model import RETHINK, SAFE, UNSAFE


@dataclass(frozen=True)
class LossWeights:
    proto: float = 1.0
    inst: float = 0.5
    ce: float = 1.0
    order: float = 0.3
    margin: float = 0.2
    temperature: float = 0.1


def proto_loss(cos: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """cos [B, 3] to prototypes; triplet hinge for safe and unsafe rows (0 if none)."""
    gap = cos[:, SAFE] - cos[:, UNSAFE]  # [B] > 0 means closer to safe
    safe, unsafe = labels == SAFE, labels == UNSAFE
    terms = torch.cat([F.relu(margin - gap[safe]), F.relu(margin + gap[unsafe])])
    return terms.mean() if terms.numel() else cos.sum() * 0.0


def info_nce(z: torch.Tensor, z_pos: torch.Tensor, queue: torch.Tensor | None, tau: float,
             ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: row i of z must pick z_pos[i] among z_pos and the queue [Q, D].

    Queue entries of the same row (``queue_ids == ids[i]``, an earlier epoch's view of the same
    trace) are masked out: on datasets smaller than the queue they would be false negatives.
    """
    logits = z @ z_pos.T / tau  # [B, B]
    if queue is not None and queue.numel():
        q_logits = z @ queue.T / tau  # [B, Q]
        if ids is not None and queue_ids is not None:
            q_logits = q_logits.masked_fill(ids[:, None] == queue_ids[None, :], float("-inf"))
        logits = torch.cat([logits, q_logits], dim=1)  # [B, B+Q]
    return F.cross_entropy(logits, torch.arange(z.shape[0], device=z.device))


def order_loss(cos: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    s = cos[:, SAFE] - cos[:, UNSAFE]  # [B]
    r, sa, un = labels == RETHINK, labels == SAFE, labels == UNSAFE
    if not (r.any() and sa.any() and un.any()):
        return cos.sum() * 0.0
    s_r = s[r]
    return (F.relu(margin - (s_r - s[un].mean())) + F.relu(margin - (s[sa].mean() - s_r))).mean()


def craft_loss(z: torch.Tensor, z_pos: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
               prototypes: torch.Tensor, queue: torch.Tensor | None, w: LossWeights,
               ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All terms and the weighted total for one batch (``ids``: row ids, for the queue mask)."""
    cos = z @ prototypes.T  # [B, 3]
    terms = {
        "proto": proto_loss(cos, labels, w.margin),
        "inst": info_nce(z, z_pos, queue, w.temperature, ids, queue_ids),
        "ce": F.cross_entropy(logits, labels),
        "order": order_loss(cos, labels, w.margin),
    }
    terms["total"] = w.proto * terms["proto"] + w.inst * terms["inst"] + w.ce * terms["ce"] + w.order * terms["order"]
    return terms
