"""Prompt-swap contrast: a refusal the policy learns for a harmful prompt must not become its
answer to a benign one (``train_rl.contrast_coef``; 0 turns it off).

Why (docs/stage2.md, rounds 1–5): under every reward tried, the LoRA learned one shift towards
refusal that does not depend on the prompt, so val refusal and val over-refusal rose together. The
policy-gradient step raises log π(y | x_h) for refusals y sampled on harmful prompts x_h; the LoRA
carries that rise over to every prompt, and the kind-aware reward pushes back only once refusals
are *sampled* on benign prompts, which is rare until over-refusal has already set in.

The contrast term takes each such refusal (a harmful row that the reward judge calls a refusal; at
most ``contrast_max`` a step, round-robin over the step's prompts), pairs it with a benign training
prompt x_b, and asks that the
policy's gain on y be larger under x_h than under x_b. It is DPO's loss (Rafailov et al. 2023)
with the two sides being one response under two prompts, rather than two responses to one prompt:

    Δ(y | x) = Σ_t m_t·(log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))    sequence log-ratio [k]
    L_swap   = −(1/k)·Σ_j log σ(β·(Δ(y_j | x_h,j) − Δ(y_j | x_b,j)))
    loss    += contrast_coef · L_swap

With ``contrast_anchor`` λ > 0 the margin is DPO-Positive's (Pal et al. 2024, "Smaug"):
β·(Δ_h − Δ_b − λ·max(0, −Δ_h)), so the margin cannot be won by lowering the refusal under the
harmful prompt below the reference too (DPO's known failure: both sides fall, the gap grows).

With ``contrast_floor`` f set, the benign side counts as max(Δ_b, f): with f = 0 nothing is won by
making the refusal less likely under the benign prompt than the reference finds it, so the term
only removes what the refusal gained there (the spill-over), and never turns into a push against
refusing in general. Below the floor, though, the harmful side's gradient is all that is left, a
push towards the policy's own refusals, and that push spills over to every prompt like the
policy gradient's does.

Scale: Δ sums over tokens while the policy-gradient loss averages over them, so one pair weighs
about as much as all its tokens would in the policy gradient; the term is added once per pass to
the first optimizer step's gradients and shares ``max_grad_norm`` with them.

At π = π_ref (Δ = 0) its gradient is −(β/2k)·Σ_j (∇Δ_h,j − ∇Δ_b,j) (the anchor's and the floor's
terms have zero gradient there): the direction that tells the
two prompts apart, not a global push. It saturates (σ → 1) once the margin is large, so unlike an
unlikelihood term it does not drive log π(y | x_b) towards −∞. It is an auxiliary loss on
off-policy pairs, not a policy gradient: the swapped rows were never sampled under x_b.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from components.core import dist
from components.eval.judges import SAFE_AT
from components.lm.generation import render
from components.rl.policy import Rollout, forward_logprobs
from components.rl.rewards import reference_mode


@dataclass
class Pairs:
    """This process's contrast pairs: refusals under their harmful prompts and under benign ones,
    with reference log-probs; ``total`` counts the step's pairs over every process."""

    harmful: Rollout       # the k refusal rows as sampled (their harmful prompts)
    swapped: Rollout       # the same completion tokens after benign prompts
    ref_harmful: torch.Tensor  # [k, Tn] log π_ref of the completion tokens under x_h
    ref_swapped: torch.Tensor  # [k, Tn] ... under x_b
    total: int


def refusal_rows(kinds: Sequence[str], p_safe_text: torch.Tensor, group_size: int, limit: int) -> torch.Tensor:
    """Global row indices of at most ``limit`` harmful rows the reward judge calls a refusal (p_safe ≥
    SAFE_AT, the cutoff evaluation uses; a degenerate reply has p_safe ≤ 0.05), in pick order:
    round-robin over the groups (every prompt's first refusal, then every prompt's second, …), so one
    prompt that mostly refuses cannot fill the quota. ``kinds`` and ``p_safe_text`` [N] cover the
    step's global batch, group by group."""
    seen: dict[int, int] = {}
    keyed = []
    for i, (kind, p) in enumerate(zip(kinds, p_safe_text.tolist())):
        if kind == "harmful" and p >= SAFE_AT:
            g = i // group_size
            keyed.append((seen.get(g, 0), g, i))  # (its rank within the group, group, row)
            seen[g] = seen.get(g, 0) + 1
    return torch.tensor([i for _, _, i in sorted(keyed)][:limit], dtype=torch.long)


def rows_of(ro: Rollout, idx: torch.Tensor) -> Rollout:
    """The rollout restricted to rows ``idx`` (same prompt width)."""
    return Rollout(ro.input_ids[idx], ro.attention_mask[idx], ro.completion_mask[idx], ro.prompt_len,
                   [ro.prompts[i] for i in idx.tolist()], [ro.completions[i] for i in idx.tolist()])


def swap_prompts(ro: Rollout, idx: torch.Tensor, prompts: Sequence[str], tokenizer) -> Rollout:
    """Rows ``idx``'s completion tokens (unchanged ids, not re-tokenised text) after ``prompts``
    [len(idx)], rendered and left-padded as ``policy.rollout`` does."""
    enc = tokenizer([render(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    comp = ro.input_ids[idx, ro.prompt_len:]  # [k, Tn]
    cmask = ro.completion_mask[idx]  # [k, Tn]
    ids = torch.cat([enc["input_ids"].to(comp.device), comp], dim=1)
    attn = torch.cat([enc["attention_mask"].to(cmask.device), cmask], dim=1)
    return Rollout(ids, attn, cmask, enc["input_ids"].shape[1], list(prompts),
                   [ro.completions[i] for i in idx.tolist()])


@torch.no_grad()
def build(policy, tokenizer, ro: Rollout, picks: torch.Tensor, benign: Sequence[str], ref_logp: torch.Tensor,
          start: int = 0) -> Pairs | None:
    """The pairs this process holds: pick j (``refusal_rows``, global row ``picks[j]``) goes with
    ``benign[j]``. ``ro`` and ``ref_logp`` [B, Tn] (the reference log-probs the batch already has)
    are global rows [start, start + B); None when none of the picks is here."""
    mine = [(j, int(g) - start) for j, g in enumerate(picks.tolist()) if start <= g < start + len(ro.prompts)]
    if not mine:
        return None
    idx = torch.tensor([i for _, i in mine], dtype=torch.long)
    swapped = swap_prompts(ro, idx, [benign[j] for j, _ in mine], tokenizer)
    with reference_mode(policy):
        ref_b = forward_logprobs(policy, swapped)[0]
    return Pairs(rows_of(ro, idx), swapped, ref_logp[idx.to(ref_logp.device)], ref_b, len(picks))


def log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ = Σ_t m_t·(log π − log π_ref) per row: [k, Tn] → [k]."""
    return ((logp - ref_logp) * mask.to(logp.dtype)).sum(1)


def swap_loss(delta_harmful: torch.Tensor, delta_swapped: torch.Tensor, beta: float,
              anchor: float = 0.0, floor: float | None = None) -> torch.Tensor:
    """Per-pair −log σ(β·(Δ_h − max(Δ_b, floor) − anchor·max(0, −Δ_h))) [k] (L_swap before the mean;
    no floor: Δ_b as it is)."""
    # max(Δ_b, floor), with the gradient passed at Δ_b = floor (torch.maximum would halve it there)
    benign = delta_swapped if floor is None else torch.where(delta_swapped >= floor, delta_swapped, floor)
    return -F.logsigmoid(beta * (delta_harmful - benign - anchor * F.relu(-delta_harmful)))  # relu: no grad at 0


def loss(policy, pairs: Pairs, beta: float, anchor: float = 0.0, floor: float | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(this process's share of L_swap: Σ_j swap_loss_j / total, so the shares of several processes
    add up to the mean; its sums [Σ swap_loss, Σ Δ_h, Σ Δ_b] for ``summary``)."""
    logp_h = forward_logprobs(policy, pairs.harmful)[0]
    logp_b = forward_logprobs(policy, pairs.swapped)[0]
    d_h = log_ratio(logp_h, pairs.ref_harmful.to(logp_h), pairs.harmful.completion_mask.to(logp_h.device))
    d_b = log_ratio(logp_b, pairs.ref_swapped.to(logp_b), pairs.swapped.completion_mask.to(logp_b.device))
    per_pair = swap_loss(d_h, d_b, beta, anchor, floor)  # [k]
    sums = torch.stack([per_pair.sum(), d_h.sum(), d_b.sum()]).detach().double().cpu()
    return per_pair.sum() / pairs.total, sums


def summary(sums: torch.Tensor, total: int, sharded: bool) -> dict[str, float]:
    """The step's contrast statistics over every process: pairs, mean L_swap, mean Δ_h and Δ_b and
    their margin, before the update; no keys when no pair was made (the same on every process, so
    the collective is reached by all or none)."""
    if total == 0:
        return {}
    if sharded:
        dist.sum_([sums])
    loss_, d_h, d_b = (float(x) / total for x in sums)
    return {"contrast_pairs": float(total), "contrast_loss": loss_, "contrast_gain_harmful": d_h,
            "contrast_gain_benign": d_b, "contrast_margin": d_h - d_b}
