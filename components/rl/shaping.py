"""Dense per-token latent rewards: potential-based shaping with the safety head as the potential.

The policy is rewarded as it writes each token of its chain of thought by how the pooled hidden
state so far lies relative to the head's safe/unsafe/rethink prototypes:

    Φ_t    = R_lat(pool(h_0..h_t))      t = 0..len−1, pooled by the head's ``LatentSpec`` (mean: running
                                        mean, last: state at t, max: running max over the window)
    Φ_{−1} = R_lat(pool(prompt))        for pool_over="all"; 0 for pool_over="completion" (empty window)
    r_t    = γ·Φ_t − Φ_{t−1}            on completion tokens (mask 1), 0 on padding after EOS

Why potential-based (Ng, Harada & Russell 1999, "Policy invariance under reward transformations:
theory and application to reward shaping", ICML): a shaping term F(s, s') = γ·Φ(s') − Φ(s) adds
Σ_t γ^t F = γ^T·Φ(s_T) − Φ(s_0) to every return, so it cannot create reward cycles and, when the
potential of the final state is fixed, leaves the optimal policy unchanged while giving every token
its own credit. Here the final potential is kept, not zeroed: with γ = 1 the per-token rewards sum
to Φ_{len−1} − Φ_{−1}, i.e. the sequence-level R_lat (``rewards.latent_scores``: the same pooling
over the whole completion) minus a constant of the prompt. So dense rewards are that terminal R_lat
spread over the tokens that earned it; use them *instead of* the sequence-level w_lat·R_lat, not on
top of it (that would count it twice), and pass the γ the advantage estimator discounts with.
``source="reference"`` scores the frozen base's states of the same tokens (see ``rewards``).
"""
from __future__ import annotations

import contextlib

import torch

from components.core.config import require
from components.head.model import SafetyHead
from components.lm.latents import prefix_pooled_states
from components.rl.rewards import SOURCES, reference_mode


def potential_rewards(phi: torch.Tensor, phi_start: torch.Tensor, mask: torch.Tensor, gamma: float
                      ) -> torch.Tensor:
    """r_t = (γ·Φ_t − Φ_{t−1})·mask_t  [B, Tn], with Φ_{−1} = phi_start.

    phi [B, Tn]: potential after each completion token; phi_start [B]; mask [B, Tn]: 1 on the
    completion up to and including EOS (a prefix of each row). With γ = 1, Σ_t r_t = Φ_{len−1} − Φ_{−1}.
    """
    require(0.0 <= gamma <= 1.0, f"shaping gamma={gamma}: use a discount in [0, 1] (the PPO/GAE gamma).")
    prev = torch.cat([phi_start[:, None], phi[:, :-1]], dim=1)  # [B, Tn]: Φ_{t−1}
    return (gamma * phi - prev) * mask.to(phi.dtype)


def dense_latent_rewards(model, ro, head: SafetyHead, gamma: float, source: str = "policy") -> torch.Tensor:
    """Per-token shaped latent rewards [B, Tn] of a ``policy.Rollout``, on completion_mask's device.

    One backbone forward (policy, or reference = adapter disabled) gives the pooled state after every
    completion token; the head scores all B·Tn of them in one batch; ``potential_rewards`` turns the
    potentials into rewards.
    """
    require(source in SOURCES, f"latent reward source={source!r}: use one of {SOURCES}.")
    ctx = reference_mode(model) if source == "reference" else contextlib.nullcontext()
    with ctx:
        states, start = prefix_pooled_states(model, ro.input_ids, ro.attention_mask, ro.prompt_len,
                                             head.spec, ro.input_ids.device)  # [B, Tn, L, d], [B, L, d]
    b, tn = states.shape[:2]
    at = head.input_mean.device
    phi = head.score(states.flatten(0, 1).to(at))["r_lat"].view(b, tn)  # [B·Tn] → [B, Tn]
    if head.spec.pool_over == "all":
        phi_start = head.score(start.to(at))["r_lat"]  # [B]: the prompt's own potential
    else:
        phi_start = torch.zeros(b, device=at)  # no completion state yet
    mask = ro.completion_mask
    return potential_rewards(phi.to(mask.device), phi_start.to(mask.device), mask, gamma)
