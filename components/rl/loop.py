"""The RL loop's parts: value head, advantages, clipped-surrogate update, one step. Which prompts a
step reads and which rows a process holds: ``components.rl.draws``; checkpoints: ``components.rl.checkpoint``.

``cfg`` is a ``components.train_rl.TrainRLConfig``; see that module for the algorithm.

Scale-out (``accelerate launch``, N processes): a step's global batch (``prompts_per_step`` harmful
then ``benign_per_step`` benign prompts × ``group_size`` completions, the batch one process would
see; each prompt's kind travels with it) is split by prompt into N
contiguous shares (``Rows``), so a GRPO group never straddles processes; each process rolls out,
scores and back-propagates only its rows. The update follows one process's minibatch schedule
on the global batch: every process draws the same permutation of the global rows, takes its rows
of each minibatch, and divides its token sums by the minibatch's global token count, so the
gradients summed over processes (``dist.sum_``, before clipping) are the gradients one process
would compute on the whole minibatch. PPO whitens advantages with global statistics. A single
process runs exactly the code it ran before scale-out (no collective, same arithmetic).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from components.core import dist
from components.rl import contrast
from components.rl import formulas
from components.rl import openings
from components.rl.draws import Rows, opening_rows, refusal_prone, shard_prompts, step_batch, step_prompts
from components.rl.policy import Rollout, forward_logprobs, rollout
from components.eval.judges import SAFE_AT
from components.rl.rewards import CraftReward, reference_mode


class ValueHead(nn.Module):
    """V(s_t) = w·h_t + b on the policy's last hidden state [B, T, d] → [B, T]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.v = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v.weight), nn.init.zeros_(self.v.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.v(h.float()).squeeze(-1)


@dataclass
class Batch:
    ro: Rollout
    old_logp: torch.Tensor | None  # [B, Tn]; None when equal to the live log-probs
    ref_logp: torch.Tensor   # [B, Tn]
    adv: torch.Tensor        # [B, Tn]
    returns: torch.Tensor | None
    kl_coef: torch.Tensor | None = None  # [B, 1] per-row KL weight (kl_coef_benign set), else None: cfg.kl_coef


def per_kind(kinds: list[str], benign: float, harmful: float) -> torch.Tensor:
    """[B, 1] per-row factor: ``benign`` on benign prompts' rollouts, ``harmful`` on the others."""
    return torch.tensor([benign if k == "benign" else harmful for k in kinds])[:, None]


def kl_weights(cfg, kinds: list[str] | None) -> torch.Tensor | None:
    """[B, 1] KL weight of each row: ``kl_coef_benign`` on benign prompts' rollouts, ``kl_coef`` on
    harmful ones; None when the two are the same (one scalar, the arithmetic it always had)."""
    if cfg.kl_coef_benign is None or kinds is None:
        return None
    return per_kind(kinds, cfg.kl_coef_benign, cfg.kl_coef)


def adv_weights(cfg, kinds: list[str] | None) -> torch.Tensor | None:
    """[B, 1] factor on each row's advantage: ``benign_adv_weight`` on benign prompts' rollouts, 1 on
    harmful ones; None when it is 1 (the arithmetic the loop always had). The gradient of the
    surrogate is linear in A, so a factor w weighs a benign rollout as w rollouts of it would."""
    if cfg.benign_adv_weight == 1.0 or kinds is None:
        return None
    return per_kind(kinds, cfg.benign_adv_weight, 1.0)


def dense_rows(dense_on: str, kinds: list[str] | None, b: int) -> torch.Tensor:
    """[B] bool: the rollouts whose R_lat is spread over their tokens (``dense_on`` all | harmful; rows
    without a kind count as harmful, the paper's setting)."""
    return per_kind(kinds or ["harmful"] * b, benign=float(dense_on == "all"), harmful=1.0)[:, 0].bool()


def single_update(cfg, n: int) -> bool:
    """True when each batch gets exactly one optimizer step (one epoch, all minibatches accumulated):
    the policy cannot move during the pass, so old log-probs equal the current ones (ratio ≡ 1)
    and the separate no-grad forward for them is skipped (GRPO with μ = 1). ``n``: global rows."""
    n_mini = -(-n // cfg.minibatch_size)
    return cfg.ppo_epochs == 1 and cfg.grad_accum >= n_mini and cfg.advantage == "grpo"


def whiten(adv: torch.Tensor, mask: torch.Tensor, sharded: bool) -> torch.Tensor:
    """(A − mean) / (std + 1e-6) over the step's generated tokens (all processes' when ``sharded``);
    std is unbiased, as ``Tensor.std``."""
    if not sharded:
        return (adv - formulas.masked_mean(adv, mask)) / (adv[mask.bool()].std() + 1e-6) * mask
    m = mask.to(adv.dtype)
    sums = torch.stack([(adv * m).sum(), m.sum()])
    dist.sum_([sums])
    mean = sums[0] / sums[1].clamp(min=1.0)
    sq = ((adv - mean) ** 2 * m).sum().reshape(1)  # second pass, as torch.std
    dist.sum_([sq])
    return (adv - mean) / ((sq[0] / (sums[1] - 1)).sqrt() + 1e-6) * mask


@torch.no_grad()
def make_batch(cfg, policy, value_head, ro: Rollout, parts: dict[str, torch.Tensor], rows: Rows | None = None,
               head=None, kinds: list[str] | None = None) -> Batch:
    """Old and reference log-probs, then advantages (group baseline or GAE). ``parts``: the
    reward's parts [B] (``CraftReward``); ``head``: the safety head, for dense latent rewards;
    ``kinds``: each row's prompt kind [B], for a kind-dependent KL weight and ``dense_on``."""
    rows = rows or Rows(0, len(ro.prompts), len(ro.prompts))
    coef, scale = kl_weights(cfg, kinds), adv_weights(cfg, kinds)
    with reference_mode(policy):
        ref_logp, _, _ = forward_logprobs(policy, ro)
    if single_update(cfg, rows.total):
        old_logp, hidden = None, None  # filled from the live forward in ``update``
    else:
        old_logp, _, hidden = forward_logprobs(policy, ro, want_hidden=cfg.advantage == "ppo")
    mask = ro.completion_mask.to(ref_logp.device)
    rewards = parts["total"].to(ref_logp.device)  # [B]
    if cfg.advantage == "grpo":
        adv, _ = formulas.group_advantages(rewards, cfg.group_size, cfg.std_norm, cfg.min_group_std)
        if cfg.benign_baseline == "text_zero" and kinds is not None:  # benign text term against 0
            benign = torch.tensor([k == "benign" for k in kinds], device=adv.device)
            adv = adv + formulas.text_zero_shift(parts["r_txt"].to(adv), benign, cfg.group_size, cfg.w_txt)
        adv = adv[:, None] if scale is None else adv[:, None] * scale.to(adv)  # [B, 1]
        return Batch(ro, old_logp, ref_logp, adv * mask, None, coef)  # [B, 1] → [B, Tn]
    token_r = torch.zeros_like(ref_logp)  # [B, Tn]
    last = mask.sum(1).clamp(min=1) - 1  # index of the final generated token
    if cfg.latent_rewards == "dense":
        from components.rl import shaping  # imported here: the sequence path does not need it

        # w_lat·R_lat spread over the tokens (potential shaping) on the rows ``dense_on`` names; text and
        # consistency terms, and the other rows' w_lat·R_lat, at the end
        dense = shaping.dense_latent_rewards(policy, ro, head, cfg.gamma, cfg.reward_source).to(token_r)
        on = dense_rows(cfg.dense_on, kinds, len(last)).to(token_r)  # [B]: 1 where R_lat is spread
        token_r = token_r + cfg.w_lat * dense * on[:, None]
        rewards = rewards - cfg.w_lat * parts["r_lat"].to(rewards) * on.to(rewards)
    token_r[torch.arange(len(last)), last] += rewards
    if cfg.kl_in == "reward":
        kl_w = cfg.kl_coef if coef is None else coef.to(token_r)  # scalar or [B, 1]
        token_r = token_r - kl_w * (old_logp - ref_logp) * mask
    values = value_head(hidden)
    adv, returns = formulas.gae(token_r, values, mask, cfg.gamma, cfg.lam)
    adv = whiten(adv, mask, rows.sharded)  # the value targets (returns) stay unscaled
    return Batch(ro, old_logp, ref_logp, adv if scale is None else adv * scale.to(adv), returns, coef)


STATS = ("loss", "kl", "clipfrac", "entropy", "vf_loss")


def update(cfg, policy, value_head, opt, accelerator, batch: Batch, gen, rows: Rows | None = None,
           pairs: contrast.Pairs | None = None, n_pairs: int = 0, opening: openings.Openings | None = None,
           ) -> dict:
    """``ppo_epochs`` passes of minibatch clipped-surrogate updates; returns mean statistics.
    ``pairs`` (``contrast_coef`` > 0): this process's prompt-swap contrast pairs, of ``n_pairs`` over
    every process; the contrast loss joins the first optimizer step of each pass, weighted by
    ``contrast_coef`` and averaged over all the pairs. ``opening`` (``opening_coef`` > 0): this
    process's benign prompts × refusal openings; their unlikelihood joins the same optimizer step."""
    n = batch.adv.shape[0]
    rows = rows or Rows(0, n, n)
    lora, vh = [p for p in policy.parameters() if p.requires_grad], list(value_head.parameters())
    params = lora + vh
    synced = lora + vh if cfg.advantage == "ppo" else lora  # the value head trains with ppo only
    tokens = dist.cat(batch.ro.completion_mask.sum(1).float().cpu()) if rows.sharded else None  # [N_global]
    stats: list[torch.Tensor] = []
    swap = torch.zeros(3, dtype=torch.float64)  # this process's contrast sums, first pass
    opened = torch.zeros(3, dtype=torch.float64)  # this process's opening sums, first pass
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(rows.total, generator=gen)
        minibatches = [perm[i : i + cfg.minibatch_size] for i in range(0, rows.total, cfg.minibatch_size)]
        if pairs is not None:
            c_loss, sums = contrast.loss(policy, pairs, cfg.contrast_beta, cfg.contrast_anchor, cfg.contrast_floor)
            accelerator.backward(cfg.contrast_coef * c_loss)
            swap = sums if epoch == 0 else swap
        if opening is not None:
            o_loss, o_sums = openings.loss(policy, opening)
            accelerator.backward(cfg.opening_coef * o_loss)
            opened = o_sums if epoch == 0 else opened
        for k, idx in enumerate(minibatches):
            denom = tokens[idx].sum().clamp(min=1.0) if rows.sharded else None
            local = rows.local(idx) if rows.sharded else idx
            if len(local):
                loss, parts = minibatch_loss(cfg, policy, value_head, batch, local, denom)
                accelerator.backward(loss / cfg.grad_accum)
                stats.append(parts)
            else:  # none of this minibatch's rows are here: add nothing to the sums
                stats.append(torch.zeros(len(STATS), dtype=torch.float64))
            if (k + 1) % cfg.grad_accum == 0 or k + 1 == len(minibatches):
                optimizer_step(accelerator, opt, params, synced if rows.sharded else [], cfg.max_grad_norm)
    table = torch.stack(stats)  # [minibatches × epochs, len(STATS)]
    if rows.sharded:
        dist.sum_([table])  # each process holds its share of each minibatch mean: the sum is the mean
    # means over minibatches, summed in order as Python floats
    out = {k: sum(float(x) for x in table[:, j]) / len(table) for j, k in enumerate(STATS)}
    if cfg.contrast_coef > 0:
        out.update(contrast.summary(swap, n_pairs, rows.sharded))
    if cfg.opening_coef > 0:
        out.update(openings.summary(opened, cfg.opening_prompts, cfg.opening_prompts * (cfg.opening_sides == "both"),
                                    rows.sharded))
    return out


def optimizer_step(accelerator, opt, params: list, synced: list, max_norm: float) -> None:
    """Sum the gradients of ``synced`` over processes (empty: one process, nothing to sum), clip
    ``params``' norm at ``max_norm``, step and clear. A process without rows in the window has no
    gradients yet; it joins the sum with zeros."""
    if synced:
        for p in synced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dist.sum_([p.grad for p in synced])
    accelerator.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad()


def minibatch_loss(cfg, policy, value_head, batch: Batch, idx: torch.Tensor, denom: torch.Tensor | None):
    """Loss on rows ``idx`` and its statistics [len(STATS)]. Token means divide by ``denom`` (the
    global minibatch's token count) when given, so processes' shares add up to the global mean."""
    logp, logits, hidden = forward_logprobs(policy, batch.ro, idx, want_hidden=cfg.advantage == "ppo")
    mask = batch.ro.completion_mask[idx].to(logp.device)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return formulas.masked_mean(x, mask) if denom is None else (x * mask.to(x.dtype)).sum() / denom

    old = logp.detach() if batch.old_logp is None else batch.old_logp[idx]
    pg, clipped = formulas.clipped_surrogate(logp, old, batch.adv[idx], cfg.clip)
    kl = formulas.k3_kl(logp, batch.ref_logp[idx])
    loss = mean(pg)
    if cfg.kl_in == "loss" and batch.kl_coef is None:
        loss = loss + cfg.kl_coef * mean(kl)
    elif cfg.kl_in == "loss":  # per-row weights [b, 1]: kl_coef_benign on benign rows
        loss = loss + mean(batch.kl_coef[idx].to(kl) * kl)
    vf = torch.zeros(())
    if cfg.advantage == "ppo":
        vf = mean((value_head(hidden) - batch.returns[idx]) ** 2)
        loss = loss + cfg.vf_coef * vf
    with torch.no_grad():
        parts = torch.tensor([float(loss), float(mean(kl)), float(mean(clipped)),
                              float(mean(formulas.entropy(logits))), float(vf)], dtype=torch.float64)
    return loss, parts


def rl_step(cfg, step, policy, tokenizer, value_head, opt, accelerator, reward: CraftReward,
            pools: dict[str, list[str]], gen, engine: str = "ours") -> dict:
    """One full RL step: rollout (with generation ``engine``) → reward → advantages → update.
    ``pools``: training prompts by kind (harmful, benign). Returns logged metrics (of the global
    batch, the same on every process)."""
    rank = accelerator.process_index
    prompts, kinds = step_batch(pools, cfg, step)
    picked = {}
    if cfg.benign_candidates > 1 and cfg.benign_per_step:  # the benign prompts the policy likeliest refuses
        benign, picked = refusal_prone(cfg, policy, tokenizer, pools, step, accelerator)
        prompts = prompts[: cfg.prompts_per_step] + benign
    mine, rows = shard_prompts(list(zip(prompts, kinds)), cfg.group_size, rank, accelerator.num_processes)
    model = accelerator.unwrap_model(policy)
    ro = rollout(model, tokenizer, [p for p, _ in mine], cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                 cfg.top_p, accelerator.device, engine, stream=rank)
    row_kinds = [k for _, k in mine for _ in range(cfg.group_size)]  # [B], parallel to ro.prompts
    parts = reward(model, tokenizer, ro.prompts, ro.completions, accelerator.device, row_kinds)
    batch = make_batch(cfg, policy, value_head, ro, parts, rows, reward.head, row_kinds)
    pairs, picks = None, torch.zeros(0, dtype=torch.long)
    if cfg.contrast_coef > 0:  # the step's refusals (over every process), each with a benign training prompt
        all_kinds = [k for k in kinds for _ in range(cfg.group_size)]  # [N_global]
        picks = contrast.refusal_rows(all_kinds, dist.cat(parts["p_safe_text"]), cfg.group_size, cfg.contrast_max)
        benign = step_prompts(pools["benign"], cfg.contrast_max, cfg.seed, step, "contrast")
        pairs = contrast.build(model, tokenizer, ro, picks, benign, batch.ref_logp, rows.start)
    stats = update(cfg, policy, value_head, opt, accelerator, batch, gen, rows, pairs, len(picks),
                   opening_rows(cfg, tokenizer, pools, step, rank, accelerator))
    parts = {k: dist.cat(v) for k, v in parts.items()}  # [N_global] in global row order
    lengths = dist.cat(ro.completion_mask.sum(1).float())
    out = {f"rl/reward_{k}" if k != "total" else "rl/reward": float(v.mean()) for k, v in parts.items()}
    out.update({f"rl/{k}": v for k, v in stats.items()})
    out["rl/response_length"] = float(lengths.mean())
    out.update(picked)
    harmful = torch.tensor([k == "harmful" for k in kinds for _ in range(cfg.group_size)])  # [N_global]
    refused = parts["p_safe_text"] >= SAFE_AT  # [N_global]
    out["rl/text_refusal_rate"] = float(refused[harmful].float().mean())  # harmful rollouts the judge calls safe
    if not harmful.all():
        out["rl/text_over_refusal"] = float(refused[~harmful].float().mean())  # benign rollouts refused
        out["rl/reward_benign"] = float(parts["total"][~harmful].mean())
    out["rl/reward_harmful"] = float(parts["total"][harmful].mean())
    flat = formulas.group_advantages(parts["total"], cfg.group_size, min_std=cfg.min_group_std)[1]  # [P]
    out["rl/flat_groups"] = float(flat.float().mean())
    return out


def check_same_adapter(policy) -> None:
    """Fail when the processes' adapters differ: each applies the same summed gradients, so a
    difference means they diverged and the main process's adapter would be one of several."""
    if dist.world() == 1:
        return
    digest = hashlib.sha256()
    for p in policy.parameters():
        if p.requires_grad:
            digest.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    seen = dist.gather(digest.hexdigest())
    if len(set(seen)) > 1:
        raise RuntimeError(f"the {len(seen)} processes ended with different adapters: they diverged.")

