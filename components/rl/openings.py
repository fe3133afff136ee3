"""Unlikelihood of a refusal opening under benign prompts, and with ``opening_sides: both`` its
likelihood under harmful ones (``train_rl.opening_coef``; 0 = off).

Why (docs/stage2.md, round 17): 17 of the committed adapter's 18 over-refusals opened "I'm sorry".
Refusing is decided at the first reply tokens, and the opening the policy gradient raises on harmful
prompts spreads to benign ones through the shared LoRA. The kind-aware reward pushes back only when
such a reply is *sampled* on one of the step's few benign prompts. This term pushes back on every
step, on more benign prompts, at the place the decision is made, without sampling anything.

For benign training prompts x (``opening_prompts`` a step, an epoch-wise walk of the benign pool)
and refusal openings o_1 … o_K (``openings``: token sequences, none a prefix of another, so the
events "the reply opens with o_k" are disjoint):

    P(x)   = Σ_k π(o_k | x) = Σ_k Π_t π(o_k,t | x, o_k,<t)     probability of opening with a refusal
    L_open = −(1/n)·Σ_x log(1 − P(x))                        unlikelihood (Welleck et al. 2020)
    loss  += opening_coef · L_open

∂L_open/∂log P(x) = (1/n)·P/(1 − P): nothing where the policy seldom opens a benign reply with a
refusal, and a push that grows as it does. Under Adam, though, a small gradient that always points
the same way still moves the weights at the full learning rate (round 18: at P ≈ 0.003 the term
held harmful refusals down too, through the shared LoRA).

``opening_sides: both`` adds as many harmful training prompts x_h, with the opposite target, which
makes the term the cross-entropy of a refusal gate read at the first reply tokens:

    L_open = −(1/(n_b + n_h))·[Σ_{x_b} log(1 − P(x_b)) + Σ_{x_h} log P(x_h)]

so its gradient is the direction that tells the two kinds apart rather than a push on every
prompt (the same aim as ``components.rl.contrast``, on the opening alone and without sampling). P(x) is read at temperature 1 (the rollouts sample at
``temperature``), and for the one tokenisation of each opening the tokenizer gives on its own, so it
is a lower bound of the chance that a reply opens so. Harmful prompts are not in the term; their refusals are
the policy gradient's unless ``opening_sides: both``. Like the prompt-swap contrast it is an auxiliary loss added to the first
optimizer step of each pass, sharing ``max_grad_norm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from components.core import dist
from components.core.config import require
from components.lm.generation import render
from components.rl.policy import Rollout

MAX_P = 1.0 - 1e-6  # P(x) is clamped below 1 so that log(1 − P) stays finite


@dataclass
class Openings:
    """This process's (prompt, opening) rows and the number of prompts over every process."""

    rows: Rollout   # n_local·K rows: prompt i's K openings are rows i·K … i·K + K − 1
    n_openings: int  # K
    total: int       # prompts over every process (the mean's denominator)
    harmful: torch.Tensor  # [n_local] bool: True where the target is to open with a refusal


def opening_ids(tokenizer, openings: Sequence[str]) -> list[list[int]]:
    """Token ids of each opening as a reply starts (no special tokens). Raises ConfigError when one
    is empty or a prefix of another (a duplicate included): their probabilities would then overlap
    and P(x) count one reply twice."""
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openings]
    for i, (o, a) in enumerate(zip(openings, ids)):
        require(len(a) > 0, f"train_rl.openings: {o!r} has no tokens; remove it.")
        for j, (o2, b) in enumerate(zip(openings, ids)):
            require(i == j or len(a) > len(b) or b[: len(a)] != a,
                    f"train_rl.openings: {o!r} is a prefix of {o2!r} once tokenised (or the same), so the "
                    f"two would count one reply twice; keep only {o!r}.")
    return ids


def build(tokenizer, prompts: Sequence[str], ids: list[list[int]], total: int, device,
          harmful: Sequence[bool] | None = None) -> Openings:
    """Rows render(x) + o_k for each prompt x and opening k: prompts left-padded to a common width Tp,
    openings right-padded to To (mask 0 after their end), so ``forward_logprobs`` reads the openings'
    log-probs at [:, Tp:]. ``harmful[i]``: prompt i's target is a refusal (default: none is)."""
    k = len(ids)
    enc = tokenizer([render(tokenizer, p) for p in prompts for _ in range(k)], return_tensors="pt",
                    padding=True, add_special_tokens=False)
    width = max(len(o) for o in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    comp = torch.tensor([o + [pad] * (width - len(o)) for o in ids] * len(prompts), dtype=torch.long)  # [n·K, To]
    cmask = torch.tensor([[1] * len(o) + [0] * (width - len(o)) for o in ids] * len(prompts), dtype=torch.long)
    rows = Rollout(torch.cat([enc["input_ids"], comp], 1).to(device),
                   torch.cat([enc["attention_mask"], cmask], 1).to(device), cmask.to(device),
                   enc["input_ids"].shape[1], [p for p in prompts for _ in range(k)],
                   [""] * (len(prompts) * k))
    flags = torch.tensor(list(harmful) if harmful is not None else [False] * len(prompts), dtype=torch.bool)
    return Openings(rows, k, total, flags.to(device))


def opening_logprobs(policy, batch: Openings) -> torch.Tensor:
    """log π(o_k,t | x, o_k,<t) [n·K, To] with each prompt encoded once: the prompts [n, Tp] run with a
    KV cache, the cache is repeated K times, and the K openings [n·K, To] run on it. The same values as
    ``forward_logprobs`` on ``batch.rows`` (n·K full rows), on about (n·Tp + n·K·To)/(n·K·(Tp + To)) of
    the tokens: a sixth with K = 6 short openings."""
    from components.rl.formulas import token_logprobs

    k, ro, tp = batch.n_openings, batch.rows, batch.rows.prompt_len
    ids, mask = ro.input_ids[::k, :tp], ro.attention_mask[::k, :tp]  # [n, Tp], left-padded
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = policy(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)  # [n, …] → [n·K, …], prompt i's rows i·K … i·K + K − 1
    opening = ro.input_ids[:, tp:]  # [n·K, To]
    o_pos = pos[:, -1:].repeat_interleave(k, 0) + 1 + torch.arange(opening.shape[1], device=opening.device)
    rest = policy(input_ids=opening, attention_mask=ro.attention_mask, position_ids=o_pos, past_key_values=cache,
                  use_cache=True).logits  # [n·K, To, V]: position t predicts opening token t + 1
    first = token_logprobs(out.logits[:, -1:].repeat_interleave(k, 0), opening[:, :1])  # [n·K, 1]
    return torch.cat([first, token_logprobs(rest[:, :-1], opening[:, 1:])], dim=1)


def log_p_refuse(logp: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """log P(x) = logsumexp_k Σ_t m_t·log π(o_k,t | …): [n·K, To] token log-probs → [n]."""
    per_opening = (logp * mask.to(logp.dtype)).sum(1).view(-1, k)  # [n, K]
    return torch.logsumexp(per_opening, dim=1)


def unlikelihood(log_p: torch.Tensor) -> torch.Tensor:
    """−log(1 − P) per prompt [n], with P = exp(log_p) clamped to MAX_P."""
    return -torch.log1p(-log_p.exp().clamp(max=MAX_P))


def loss(policy, batch: Openings) -> tuple[torch.Tensor, torch.Tensor]:
    """(this process's share of L_open: Σ_x L(x) / total, with L(x) = −log(1 − P(x)) on a benign
    prompt and −log P(x) on a harmful one, so the shares of several processes add up to the mean; its
    sums [Σ L, Σ_benign P, Σ_harmful P] for ``summary``)."""
    logp = opening_logprobs(policy, batch)  # [n·K, To]
    log_p = log_p_refuse(logp, batch.rows.completion_mask.to(logp.device), batch.n_openings)  # [n]
    harmful = batch.harmful.to(log_p.device)
    per_prompt = torch.where(harmful, -log_p, unlikelihood(log_p))
    p = log_p.exp()
    sums = torch.stack([per_prompt.sum(), p[~harmful].sum(), p[harmful].sum()]).detach().double().cpu()
    return per_prompt.sum() / batch.total, sums


def summary(sums: torch.Tensor, n_benign: int, n_harmful: int, sharded: bool) -> dict[str, float]:
    """The step's mean L_open, and mean P(x) by kind, over every process, before the update."""
    if sharded:
        dist.sum_([sums])
    out = {"opening_loss": float(sums[0]) / (n_benign + n_harmful), "opening_p": float(sums[1]) / n_benign}
    if n_harmful:
        out["opening_p_harmful"] = float(sums[2]) / n_harmful
    return out
