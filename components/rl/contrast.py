"""Prompt-swap contrast: a refusal the policy learns for a harmful prompt must not become its
answer to a benign one (``train_rl.contrast_coef``; 0 turns it off).

Why (docs/stage2.md, rounds 1–5): under every reward tried, the LoRA learned one shift towards
refusal that does not depend on the prompt, so val refusal and val over-refusal rose together. The
policy-gradient step raises log π(y | x_h) for refusals y sampled on harmful prompts x_h; the LoRA
carries that rise over to every prompt, and the kind-aware reward pushes back only once refusals
are *sampled* on benign prompts, which is rare until over-refusal has already set in.

The contrast term takes each such refusal (a harmful row that the reward judge calls a refusal; at
most ``contrast_max`` a step), pairs it with a benign training prompt x_b, and asks that the
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
refusing in general.

At π = π_ref (Δ = 0) its gradient is −(β/2k)·Σ_j (∇Δ_h,j − ∇Δ_b,j): the direction that tells the
two prompts apart, not a global push. It saturates (σ → 1) once the margin is large, so unlike an
unlikelihood term it does not drive log π(y | x_b) towards −∞. It is an auxiliary loss on
off-policy pairs, not a policy gradient: the swapped rows were never sampled under x_b.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from components.eval.judges import SAFE_AT
from components.lm.generation import render
from components.rl.policy import Rollout, forward_logprobs
from components.rl.rewards import reference_mode


@dataclass
class Pairs:
    """k refusals, each under its harmful prompt and under a benign one, with reference log-probs."""

    harmful: Rollout       # the k refusal rows as sampled (their harmful prompts)
    swapped: Rollout       # the same completion tokens after benign prompts
    ref_harmful: torch.Tensor  # [k, Tn] log π_ref of the completion tokens under x_h
    ref_swapped: torch.Tensor  # [k, Tn] ... under x_b


def refusal_rows(kinds: Sequence[str], p_safe_text: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices (ascending, at most ``limit``) of harmful rows the reward judge calls a refusal
    (p_safe ≥ SAFE_AT, the cutoff evaluation uses; a degenerate reply has p_safe ≤ 0.05)."""
    hits = [i for i, (k, p) in enumerate(zip(kinds, p_safe_text.tolist())) if k == "harmful" and p >= SAFE_AT]
    return torch.tensor(hits[:limit], dtype=torch.long)


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
def build(policy, tokenizer, ro: Rollout, kinds: Sequence[str], p_safe_text: torch.Tensor,
          benign: Sequence[str], limit: int) -> Pairs | None:
    """This step's pairs: refusal j (``refusal_rows``) goes with ``benign[j]``; None without refusals."""
    idx = refusal_rows(kinds, p_safe_text, min(limit, len(benign)))
    if not len(idx):
        return None
    harmful, swapped = rows_of(ro, idx), swap_prompts(ro, idx, benign[: len(idx)], tokenizer)
    with reference_mode(policy):
        ref_h = forward_logprobs(policy, harmful)[0]
        ref_b = forward_logprobs(policy, swapped)[0]
    return Pairs(harmful, swapped, ref_h, ref_b)


def log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ = Σ_t m_t·(log π − log π_ref) per row: [k, Tn] → [k]."""
    return ((logp - ref_logp) * mask.to(logp.dtype)).sum(1)


def swap_loss(delta_harmful: torch.Tensor, delta_swapped: torch.Tensor, beta: float,
              anchor: float = 0.0, floor: float | None = None) -> torch.Tensor:
    """Per-pair −log σ(β·(Δ_h − max(Δ_b, floor) − anchor·max(0, −Δ_h))) [k] (L_swap before the mean;
    no floor: Δ_b as it is)."""
    benign = delta_swapped if floor is None else delta_swapped.clamp(min=floor)
    return -F.logsigmoid(beta * (delta_harmful - benign - anchor * (-delta_harmful).clamp(min=0)))


def loss(policy, pairs: Pairs, beta: float, denom: float | None = None, anchor: float = 0.0,
         floor: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(Σ_j swap_loss_j / denom, statistics: the pairs' mean Δ_h, Δ_b and margin Δ_h − Δ_b); ``denom``:
    the number of pairs over all processes (default: this process's k), so the shares of several
    processes add up to the mean."""
    logp_h = forward_logprobs(policy, pairs.harmful)[0]
    logp_b = forward_logprobs(policy, pairs.swapped)[0]
    d_h = log_ratio(logp_h, pairs.ref_harmful.to(logp_h), pairs.harmful.completion_mask.to(logp_h.device))
    d_b = log_ratio(logp_b, pairs.ref_swapped.to(logp_b), pairs.swapped.completion_mask.to(logp_b.device))
    k = len(d_h) if denom is None else denom
    stats = {"gain_harmful": float(d_h.detach().mean()), "gain_benign": float(d_b.detach().mean()),
             "margin": float((d_h - d_b).detach().mean())}
    return swap_loss(d_h, d_b, beta, anchor, floor).sum() / k, stats
