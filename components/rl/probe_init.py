"""LoRA A rows aligned with the direction that tells harmful prompts from benign ones.

Why. The LoRA update of a layer is ΔW·h = s·B·(A·h). With B = 0 at init, the first gradient on B is

    ∂L/∂B ∝ Σ_rows adv · g_t · (A·h_t)ᵀ        g_t: [d_out] upstream gradient, h_t: [d_in] layer input

With A random, A·h_t mostly reads the component that every prompt's states share, so a refusal
rewarded on a harmful prompt and one penalised on a benign prompt push B along nearly opposite copies
of the same vector: the net move is the imbalance of the two, a refusal bias that ignores the
prompt (docs/stage2.md, rounds 3–6: "refuse more, not refuse these"). The base model does separate
the kinds (probe AUROC 0.98 on mean-pooled prompt states, round 5), only not along A's rows.

What. For every LoRA-wrapped Linear, the inputs it sees are mean-pooled over each training prompt's
tokens (chat template included), with the adapter off; then, for A [r, d_in] as peft drew it,

    d   = mean_harmful(h̄) − mean_benign(h̄)                          [d_in]
    m̂   = mean over all prompts of h̄, normalised                     (the shared component)
    d̂⊥  = d − (d·m̂)·m̂, normalised                                   (the kind axis, off the shared part)
    A[i] ← |A[0]|·d̂⊥ + σ·(A[i] − (A[i]·m̂)·m̂)                          σ = NOISE

Every row reads the kind axis with peft's scale; σ keeps the rows apart (B's columns would
otherwise get identical gradients and the adapter would stay rank 1), and no row reads m̂. So A·h
carries the prompt's harmfulness with a sign, and a penalised benign refusal moves B the same way
as a rewarded harmful one. Only ``train`` prompts are used (never val or test). B stays 0, so the
policy still starts equal to the reference. Measured in docs/stage2.md (round 8): aligning only
A[0] left the refuse-more line as it was; aligning every row moved it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from components.lm.generation import render

NOISE = 0.1
"""σ: the share of peft's random rows (off m̂) kept in each aligned row."""


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import Linear as LoraLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


@torch.no_grad()
def pooled_inputs(model, tokenizer, prompts: Sequence[str], device, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per LoRA layer: its input mean-pooled over each prompt's tokens, [n_prompts, d_in], adapter off."""
    layers = _lora_layers(model)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    mask: list[torch.Tensor] = []  # the current batch's [b, T, 1] attention mask, read by the hooks

    def hook(name):
        def fn(_module, args):
            x = args[0].float()  # [b, T, d_in]
            out[name].append((x * mask[0]).sum(1) / mask[0].sum(1))  # [b, d_in]
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with model.disable_adapter():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer([render(tokenizer, p) for p in prompts[i:i + batch_size]], return_tensors="pt",
                                padding=True, add_special_tokens=False).to(device)
                mask[:] = [enc["attention_mask"][..., None].float()]
                model(**enc, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(xs) for name, xs in out.items()}


def aligned_rows(a: torch.Tensor, harmful: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """The new A [r, d_in] from peft's A and the pooled inputs [n_h, d_in], [n_b, d_in] (docstring)."""
    a = a.float()
    m = torch.cat([harmful, benign]).mean(0)
    m_hat = m / m.norm().clamp_min(1e-12)
    d = harmful.mean(0) - benign.mean(0)
    d_perp = d - (d @ m_hat) * m_hat
    axis = d_perp / d_perp.norm().clamp_min(1e-12) * a[0].norm()  # [d_in]
    return axis[None, :] + NOISE * (a - (a @ m_hat)[:, None] * m_hat[None, :])  # [r, d_in]


@torch.no_grad()
def align_lora(model, tokenizer, harmful: Sequence[str], benign: Sequence[str], device) -> int:
    """Set every active LoRA A as ``aligned_rows`` says; returns how many layers changed."""
    xh = pooled_inputs(model, tokenizer, list(harmful), device)
    xb = pooled_inputs(model, tokenizer, list(benign), device)
    layers = _lora_layers(model)
    for name, m in layers.items():
        weight = m.lora_A[m.active_adapters[0]].weight  # [r, d_in]
        weight.copy_(aligned_rows(weight, xh[name], xb[name]).to(weight.dtype))
    return len(layers)
