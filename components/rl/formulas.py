"""The RL arithmetic, kept free of models so each formula can be checked by hand.

Shapes: B sequences, T completion positions; ``mask`` [B, T] is 1 on generated tokens (up to and
including EOS) and 0 on padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage (paper §4.2): A_i = (r_i − mean_group) / (std_group + eps).

    ``rewards`` [B] are ordered group by group (B = n_prompts · group_size). std is the unbiased
    sample std as in DeepSeekMath's GRPO.
    """
    return group_advantages(rewards, group_size, std_norm=True, eps=eps)[0]


def group_advantages(rewards: torch.Tensor, group_size: int, std_norm: bool = False, min_std: float = 0.0,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-baseline advantages [B] and the flat-group flags [P] (P = B / group_size groups).

        A_i = r_i − mean_group                      std_norm False: Dr. GRPO (Liu et al. 2025,
                                                    "Understanding R1-Zero-Like Training"): no std
                                                    division, which over-weights near-flat groups
        A_i = (r_i − mean_group) / (std_group + eps)  std_norm True: GRPO (DeepSeekMath)
        A_i = 0 for every i of a group with std_group < min_std   (DAPO-style dynamic sampling,
                                                    Yu et al. 2025: a group whose completions all
                                                    score alike carries no signal, only noise)

    ``rewards`` [B] are ordered group by group; std is the unbiased sample std (``Tensor.std``).
    A group of one has no std (NaN): never flat, and std_norm gives NaN, so use group_size >= 2.
    """
    r = rewards.view(-1, group_size)  # [P, G]
    centred = r - r.mean(1, keepdim=True)  # [P, G]
    std = r.std(1, keepdim=True) if group_size > 1 else torch.full_like(r[:, :1], float("nan"))  # [P, 1]
    adv = centred / (std + eps) if std_norm else centred
    flat = std < min_std  # [P, 1]; NaN compares False
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    return adv.reshape(-1), flat.reshape(-1)


def text_zero_shift(r_txt: torch.Tensor, benign: torch.Tensor, group_size: int, w_txt: float) -> torch.Tensor:
    """[B] shift that turns benign groups' group-baseline advantages into ``benign_baseline: text_zero``.

        A_i = R_i − mean_group R                                   (group_advantages)
            = w_txt·(R_txt,i − mean_group R_txt) + (R_rest,i − mean_group R_rest)
        A_i + w_txt·mean_group R_txt = w_txt·R_txt,i + (R_rest,i − mean_group R_rest)

    so the text term of a benign rollout is measured against 0 (g = 1/2, the undecided verdict),
    and a group whose rollouts are all refused (R_txt ≈ −1 each, rewards alike, zero advantage or a
    flat group's zero) is pushed down by about −w_txt a rollout. ``r_txt`` [B] and ``benign`` [B]
    (bool) are ordered group by group; harmful groups get 0 (their baseline stays the group mean)."""
    g = r_txt.view(-1, group_size)  # [P, G]
    shift = g.mean(1, keepdim=True).expand_as(g).reshape(-1) * w_txt  # [B]
    return torch.where(benign, shift, torch.zeros_like(shift))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over per-token rewards [B, T].

    δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t ;  A_t = δ_t + γλ·m_{t+1}·A_{t+1} ;  returns = A + V.
    Positions past the end (mask 0) have V = 0 and A = 0.
    """
    B, T = rewards.shape
    values = values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_m = mask[:, t + 1].to(rewards.dtype) if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v * next_m - values[:, t]
        last = delta + gamma * lam * next_m * last
        adv[:, t] = last * mask[:, t]
    return adv, adv + values


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (Schulman 2020)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) with ρ = exp(logp − old); and clipped flags."""
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token_t | ·) from logits [B, T, V] aligned with tokens [B, T] → [B, T]."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the policy [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
