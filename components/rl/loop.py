"""The RL loop's parts: value head, step prompts, advantages, clipped-surrogate update, one step.

``cfg`` is a ``components.train_rl.TrainRLConfig``; see that module for the algorithm.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from components.rl import checkpoint
from components.rl import formulas
from components.rl.policy import Rollout, forward_logprobs, rollout
from components.eval.judges import SAFE_AT
from components.rl.rewards import CraftReward, obfuscation_gap, reference_mode

log = logging.getLogger("craft.train_rl")


class ValueHead(nn.Module):
    """V(s_t) = w·h_t + b on the policy's last hidden state [B, T, d] → [B, T]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.v = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v.weight), nn.init.zeros_(self.v.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.v(h.float()).squeeze(-1)


def step_prompts(pool: list[str], n: int, seed: int, step: int, shard: int = 0, n_shards: int = 1) -> list[str]:
    """The prompts of one step: a pure function of (seed, step, process shard)."""
    rng = random.Random(f"{seed}:{step}:{shard}")
    return rng.sample(pool[shard::n_shards], min(n, len(pool[shard::n_shards])))


@dataclass
class Batch:
    ro: Rollout
    old_logp: torch.Tensor | None  # [B, Tn]; None when equal to the live log-probs
    ref_logp: torch.Tensor   # [B, Tn]
    adv: torch.Tensor        # [B, Tn]
    returns: torch.Tensor | None


def single_update(cfg, n: int) -> bool:
    """True when each batch gets exactly one optimizer step (one epoch, all minibatches accumulated):
    the policy cannot move during the pass, so old log-probs equal the current ones (ratio ≡ 1)
    and the separate no-grad forward for them is skipped (GRPO with μ = 1)."""
    n_mini = -(-n // cfg.minibatch_size)
    return cfg.ppo_epochs == 1 and cfg.grad_accum >= n_mini and cfg.advantage == "grpo"


@torch.no_grad()
def make_batch(cfg, policy, value_head, ro: Rollout, rewards: torch.Tensor) -> Batch:
    """Old and reference log-probs, then advantages (GRPO or GAE)."""
    with reference_mode(policy):
        ref_logp, _, _ = forward_logprobs(policy, ro)
    if single_update(cfg, len(ro.prompts)):
        old_logp, hidden = None, None  # filled from the live forward in ``update``
    else:
        old_logp, _, hidden = forward_logprobs(policy, ro, want_hidden=cfg.advantage == "ppo")
    mask = ro.completion_mask.to(ref_logp.device)
    rewards = rewards.to(ref_logp.device)
    if cfg.advantage == "grpo":
        adv = formulas.grpo_advantages(rewards, cfg.group_size)[:, None] * mask  # [B, 1] → [B, Tn]
        return Batch(ro, old_logp, ref_logp, adv, None)
    token_r = torch.zeros_like(ref_logp)
    last = mask.sum(1).clamp(min=1) - 1  # index of the final generated token
    token_r[torch.arange(len(last)), last] = rewards
    if cfg.kl_in == "reward":
        token_r = token_r - cfg.kl_coef * (old_logp - ref_logp) * mask
    values = value_head(hidden)
    adv, returns = formulas.gae(token_r, values, mask, cfg.gamma, cfg.lam)
    adv = (adv - formulas.masked_mean(adv, mask)) / (adv[mask.bool()].std() + 1e-6) * mask  # whiten
    return Batch(ro, old_logp, ref_logp, adv, returns)


def update(cfg, policy, value_head, opt, accelerator, batch: Batch, gen) -> dict:
    """``ppo_epochs`` passes of minibatch clipped-surrogate updates; returns mean statistics."""
    stats: dict[str, list[float]] = {k: [] for k in ("loss", "kl", "clipfrac", "entropy", "vf_loss")}
    n = batch.adv.shape[0]
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(n, generator=gen)
        minibatches = [perm[i : i + cfg.minibatch_size] for i in range(0, n, cfg.minibatch_size)]
        for k, idx in enumerate(minibatches):
            logp, logits, hidden = forward_logprobs(policy, batch.ro, idx, want_hidden=cfg.advantage == "ppo")
            mask = batch.ro.completion_mask[idx].to(logp.device)
            old = logp.detach() if batch.old_logp is None else batch.old_logp[idx]
            pg, clipped = formulas.clipped_surrogate(logp, old, batch.adv[idx], cfg.clip)
            kl = formulas.k3_kl(logp, batch.ref_logp[idx])
            loss = formulas.masked_mean(pg, mask)
            if cfg.kl_in == "loss":
                loss = loss + cfg.kl_coef * formulas.masked_mean(kl, mask)
            vf = torch.zeros(())
            if cfg.advantage == "ppo":
                vf = formulas.masked_mean((value_head(hidden) - batch.returns[idx]) ** 2, mask)
                loss = loss + cfg.vf_coef * vf
            accelerator.backward(loss / cfg.grad_accum)
            if (k + 1) % cfg.grad_accum == 0 or k + 1 == len(minibatches):
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad()
            with torch.no_grad():
                stats["loss"].append(float(loss))
                stats["kl"].append(float(formulas.masked_mean(kl, mask)))
                stats["clipfrac"].append(float(formulas.masked_mean(clipped, mask)))
                stats["entropy"].append(float(formulas.masked_mean(formulas.entropy(logits), mask)))
                stats["vf_loss"].append(float(vf))
    return {k: sum(v) / len(v) for k, v in stats.items() if v}


def rl_step(cfg, step, policy, tokenizer, value_head, opt, accelerator, reward: CraftReward, pool, gen,
            engine: str = "ours") -> dict:
    """One full RL step: rollout (with generation ``engine``) → reward → advantages → update.
    Returns logged metrics."""
    prompts = step_prompts(pool, cfg.prompts_per_step, cfg.seed, step,
                           accelerator.process_index, accelerator.num_processes)
    ro = rollout(accelerator.unwrap_model(policy), tokenizer, prompts, cfg.group_size, cfg.max_new_tokens,
                 cfg.temperature, cfg.top_p, accelerator.device, engine)
    parts = reward(accelerator.unwrap_model(policy), tokenizer, ro.prompts, ro.completions, accelerator.device)
    batch = make_batch(cfg, policy, value_head, ro, parts["total"])
    stats = update(cfg, policy, value_head, opt, accelerator, batch, gen)
    lengths = ro.completion_mask.sum(1).float()
    out = {f"rl/reward_{k}" if k != "total" else "rl/reward": float(v.mean()) for k, v in parts.items()}
    out.update({f"rl/{k}": v for k, v in stats.items()})
    out["rl/response_length"] = float(lengths.mean())
    out["rl/text_refusal_rate"] = float((parts["p_safe_text"] >= SAFE_AT).float().mean())
    return out


def checkpoint_modules(value_head) -> dict:
    return {"value_head": value_head}


def restore_if_any(folder, policy, opt, value_head) -> int:
    """Resume from the newest complete checkpoint in ``folder``; 0 when starting fresh."""
    last = checkpoint.latest(folder)
    if last is None:
        return 0
    start = checkpoint.restore(last, policy, opt, checkpoint_modules(value_head))
    log.info("resuming from %s (next step %d)", last, start)
    return start


def obfuscation_probe(policy, tokenizer, head, prompts, device, engine: str = "ours") -> float:
    """Obfuscation gap on fresh greedy completions of the probe prompts."""
    from components.lm.generation import new_tokens, render

    enc = tokenizer([render(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(device)
    texts = tokenizer.batch_decode(new_tokens(policy, tokenizer, enc, 32, engine=engine), skip_special_tokens=True)
    return obfuscation_gap(policy, tokenizer, head, prompts, texts, device)
