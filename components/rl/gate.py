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

The start adapter (peft's LoRA, aligned by the probe under ``lora_init: probe``, then gated) is
kept in a cache folder (``save`` / ``load``, used by ``components.rl.start_adapter``;
``components.train_rl.gate_dir`` keys it by every setting but ``RL_ONLY``), so runs that differ
only after the gate (the CRAFT stage and its text-only ablation, which differ in reward weights)
compute it once. Neither the probe nor the gate draws from the process-wide RNGs
(tests/test_rl_gate.py), so a run that loads the start adapter rolls out, samples and updates
exactly as one that computed it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from components.rl import checkpoint, openings
from components.rl.draws import gate_rows
from components.rl.loop import optimizer_step

log = logging.getLogger("craft.train_rl")


RL_ONLY = frozenset({
    "advantage", "steps", "prompts_per_step", "benign_per_step", "group_size", "max_new_tokens", "temperature",
    "top_p", "warmup_steps", "lr_final", "ppo_epochs", "minibatch_size", "grad_accum", "std_norm", "min_group_std",
    "clip", "kl_coef", "benign_candidates", "kl_coef_benign", "benign_baseline", "benign_adv_weight",
    "contrast_coef", "contrast_beta", "contrast_anchor", "contrast_floor", "contrast_max", "opening_coef",
    "opening_prompts", "opening_sides", "kl_in", "gamma", "lam", "vf_coef", "w_lat", "w_txt", "w_cons",
    "latent_rewards", "dense_on", "reward_source", "judge", "select_harmful", "select_benign", "select_max_new_tokens",
    "select_lambda", "select_judge", "log_every", "select_from", "ema_decay", "checkpoint_every", "kl_stop",
})
"""``TrainRLConfig`` fields that shape only what comes after the start adapter (rollouts, rewards,
updates, selection); every other field is part of the start adapter's cache key. A field missing
here only costs a cache miss; one wrongly here would share an adapter it should not, so a new
field joins only when neither the probe nor the gate reads it (``benign_per_step``: the gate reads
the benign train pool whatever it is)."""


def pretrain(cfg, policy, tokenizer, pools: dict[str, list[str]], accelerator,
             on_metrics: Callable[[int, dict], None] | None = None) -> list[dict[str, float]]:
    """``cfg.gate_steps`` optimizer steps of L_gate on ``policy``'s trainable (LoRA) parameters.
    Every process calls it; each back-propagates its share of the step's rows and the gradients are
    summed before clipping, as ``loop.update`` does. Returns each step's statistics (mean L_gate,
    mean P on benign and on harmful prompts, before its update); ``summary`` condenses them."""
    if not pools["benign"] or not pools["harmful"]:
        log.warning("train_rl.gate_steps=%d needs harmful and benign train prompts, and the prompts lack one kind: "
                    "no gate (set gate_steps: 0 to silence this).", cfg.gate_steps)
        return []
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
    return seen


def summary(seen: list[dict[str, float]]) -> dict[str, float]:
    """The first and last gate steps' statistics (``<key>_first``, ``<key>_last``); {} without a gate."""
    if not seen:
        return {}
    return {**{f"{k}_first": v for k, v in seen[0].items()}, **{f"{k}_last": v for k, v in seen[-1].items()}}


STEPS_FILE = "gate.json"


def cached(folder: Path | None) -> bool:
    """Whether ``folder`` holds a start adapter ``save`` renamed into place whole."""
    return folder is not None and all((folder / name).is_file() and (folder / name).stat().st_size > 0
                                      for name in (STEPS_FILE, checkpoint.WEIGHTS))


def save(folder: Path, policy, seen: list[dict[str, float]]) -> None:
    """Keep ``policy``'s trainable weights (the start adapter) and the gate's per-step statistics in
    ``folder``: written to a fresh folder beside it, flushed to disk, then renamed, so a kill leaves
    no half folder and a concurrent run that got there first keeps its own (the same adapter). The
    cache only saves time: a failure to write it is logged, and the run goes on."""
    if cached(folder):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        checkpoint.save_weights(tmp, policy)
        (tmp / STEPS_FILE).write_text(json.dumps(seen))
        for name in (checkpoint.WEIGHTS, STEPS_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, folder)
    except OSError as exc:
        if not cached(folder):  # not a concurrent run's copy in place: say why nothing was kept
            log.warning("could not keep the start adapter in %s (%s); the next run computes it again", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(folder: Path, policy) -> list[dict[str, float]]:
    """Load the start adapter ``save`` kept into ``policy``; returns the gate's per-step statistics."""
    checkpoint.load_weights(folder, policy)
    return json.loads((folder / STEPS_FILE).read_text())
