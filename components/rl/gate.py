"""The refusal gate learnt before RL starts (``train_rl.gate_steps``; 0 = off).

Why (docs/stage2.md, rounds 18–19): refusing is decided at the first reply tokens, and the base
model's state there tells harmful from benign prompts apart (val AUROC 0.93–0.97). The adapter
learns that gate on its own in 10–20 steps of its cross-entropy; inside RL, beside the policy
gradient, it did not. So the gate is trained first, and RL starts from the gated adapter.

Each gate step g draws ``gate_prompts`` harmful and as many benign train prompts (epoch-wise walks
of the pools, tagged apart from the RL steps' draws) and minimises the gate's cross-entropy

    L_gate = −(1/2n)·[Σ_{x_h} log P(x_h) + Σ_{x_b} log(1 − P(x_b))],   P(x) = Σ_k π(o_k | x)

(``components.rl.openings``: P(x) is the chance the reply opens with one of ``openings``) with its
own AdamW at ``lr``, the gradient clipped at ``max_grad_norm``. Its own optimizer: RL's Adam moments
and LR schedule start where they would without a gate. No sampling and no dropout draw (LoRA
dropout aside), so a gate run is a pure function of the seed and a resumed RL run (its checkpoints
hold the gated adapter) never repeats it.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from components.rl import openings
from components.rl.loop import gate_rows, optimizer_step

log = logging.getLogger("craft.train_rl")


def pretrain(cfg, policy, tokenizer, pools: dict[str, list[str]], accelerator,
             on_metrics: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """``cfg.gate_steps`` optimizer steps of L_gate on ``policy``'s trainable (LoRA) parameters.
    Every process calls it; each back-propagates its share of the step's rows and the gradients are
    summed before clipping, as ``loop.update`` does. Returns the first and last steps' statistics
    (mean L_gate, mean P on benign and on harmful prompts, before each update)."""
    if not pools["benign"] or not pools["harmful"]:
        log.warning("train_rl.gate_steps=%d needs harmful and benign train prompts, and the prompts lack one kind: "
                    "no gate (set gate_steps: 0 to silence this).", cfg.gate_steps)
        return {}
    lora = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora, lr=cfg.lr, weight_decay=0.0)
    rank, sharded = accelerator.process_index, accelerator.num_processes > 1
    seen: list[dict[str, float]] = []
    for g in range(cfg.gate_steps):
        rows = gate_rows(cfg, tokenizer, pools, g, rank, accelerator, cfg.gate_prompts, True, "gate")
        sums = torch.zeros(3, dtype=torch.float64)
        if rows is not None:
            loss, sums = openings.loss(policy, rows)
            accelerator.backward(loss)
        optimizer_step(accelerator, opt, lora, lora if sharded else [], cfg.max_grad_norm)
        stats = openings.summary(sums, cfg.gate_prompts, cfg.gate_prompts, sharded)
        seen.append({"gate/loss": stats["opening_loss"], "gate/p_benign": stats["opening_p"],
                     "gate/p_harmful": stats["opening_p_harmful"]})
        if on_metrics:
            on_metrics(g, seen[-1])
        log.info("gate step %d loss %.3f P benign %.3f harmful %.3f", g, *seen[-1].values())
    if not seen:
        return {}
    return {**{f"{k}_first": v for k, v in seen[0].items()}, **{f"{k}_last": v for k, v in seen[-1].items()}}
