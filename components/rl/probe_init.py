"""LoRA A rows aligned with the direction that tells harmful prompts from benign ones.

Why. The LoRA update of a layer is ΔW·h = s·B·(A·h). With B = 0 at init, the first gradient on B is

    ∂L/∂B ∝ Σ_rows adv · g_t · (A·h_t)ᵀ        g_t: [d_out] upstream gradient, h_t: [d_in] layer input

With A random, A·h_t mostly reads the component that every prompt's states share, so a refusal
rewarded on a harmful prompt and one penalised on a benign prompt push B along nearly opposite copies
of the same vector: the net move is the imbalance of the two, a refusal bias that ignores the
prompt (docs/stage2.md, rounds 3–6: "refuse more, not refuse these"). The base model does separate
the kinds (probe AUROC 0.98 on mean-pooled prompt states, round 5), only not along A's rows.

What. For every LoRA-wrapped Linear, the inputs it sees on each training prompt (chat template
included, adapter off) are read at one of ``AT``: ``last``, the last prompt position, whose state
emits the first reply token (where a refusal is decided), or ``mean``, pooled over the prompt's tokens
(round 8's choice); then, for A [r, d_in] as peft drew it,

    d   = mean_harmful(h̄) − mean_benign(h̄)                          [d_in]
    m̂   = mean over all prompts of h̄, normalised                     (the shared component)
    d̂⊥  = d − (d·m̂)·m̂, normalised                                   (the kind axis, off the shared part)
    A[i] ← |A[0]|·d̂⊥ + σ·(A[i] − (A[i]·m̂)·m̂)                          σ = NOISE

With ``shrinkage`` α < 1 the axis is a regularised Fisher discriminant instead of the mean
difference: with S the pooled within-kind covariance of the inputs [d_in, d_in],

    S_α = (1 − α)·S + α·(tr S / d_in)·I,      d ← S_α⁻¹·d                 (α = 1: d as it was)

which discounts directions along which prompts of one kind already vary (Friedman 1989's regularised
discriminant; with 189 train prompts and d_in = 576, S alone is singular). Round 18: on the base
model's last-position inputs, scored on the val prompts (31 harmful, 48 benign), α = 0.5 gave a mean
AUROC over the 117 layers with an axis of 0.946 against the mean difference's 0.881, and 83% of
harmful against 7% of benign val prompts above zero (68% and 4%); α = 0.1 and 0.01 gave 0.928 and 0.893.

Every row reads the kind axis with peft's scale; σ keeps the rows apart (B's columns would
otherwise get identical gradients and the adapter would stay rank 1), and no row reads m̂. So A·h
carries the prompt's harmfulness with a sign, and a penalised benign refusal moves B the same way
as a rewarded harmful one. Only ``train`` prompts are used (never val or test). B stays 0, so the
policy still starts equal to the reference. Measured in docs/stage2.md (round 8): aligning only
A[0] left the refuse-more line as it was; aligning every row moved it.

Why ``last``. A·h is centred (harmful > 0 > benign) only on the inputs m̂ was taken from. Read at
the last prompt position, the axis built from mean-pooled prompts is offset by many times its
spread (round 14: in most layers both kinds project below zero, harmful 22% and benign 8% above),
so there s·B·A·h is nearly the same for every prompt, a refusal bias; built and centred on
last-position inputs, 65% of val harmful and 5% of val benign prompts project above zero.
"""
from __future__ import annotations

from typing import Sequence

import torch

from components.lm.generation import render

NOISE = 0.1
"""σ: the share of peft's random rows (off m̂) kept in each aligned row."""
AT = ("last", "mean")
"""Where a prompt's layer inputs are read: its last position, or the mean over its tokens."""


def _layers(model) -> list[torch.nn.Module]:
    from components.core.config import require
    from components.rl.policy import lora_linears

    layers = lora_linears(model)
    require(layers, "train_rl.lora_init=probe sets plain LoRA A matrices (one active adapter, no DoRA); "
                    "this model has none: set lora_init: random.")
    return layers


@torch.no_grad()
def layer_inputs(model, tokenizer, prompts: Sequence[str], device, batch_size: int = 16,
                 at: str = "mean") -> list[torch.Tensor]:
    """Per LoRA layer (``_layers`` order): its input [n_prompts, d_in] on each prompt, adapter off,
    mean-pooled over the real tokens (``at="mean"``) or at the last real token (``"last"``); pads
    (either side) never enter."""
    if at not in AT:
        raise ValueError(f"probe_init: at={at!r}; use one of {AT}.")
    layers = _layers(model)
    out: list[list[torch.Tensor]] = [[] for _ in layers]
    mask = None  # the current batch's [b, T, 1] real-token mask, read by the hooks

    def hook(i):
        def fn(_module, args):
            x = args[0].float()  # [b, T, d_in]
            if at == "last":
                last = mask.shape[1] - 1 - mask[..., 0].flip(1).int().argmax(1)  # [b] last real position
                out[i].append(x[torch.arange(len(x)), last])  # [b, d_in]
            else:
                out[i].append(torch.where(mask, x, 0.0).sum(1) / mask.sum(1))  # [b, d_in]
        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        with model.disable_adapter():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer([render(tokenizer, p) for p in prompts[i:i + batch_size]], return_tensors="pt",
                                padding=True, add_special_tokens=False).to(device)
                attn = enc["attention_mask"]
                mask = attn[..., None].bool()
                model(input_ids=enc["input_ids"], attention_mask=attn, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(xs) for xs in out]


def discriminant(harmful: torch.Tensor, benign: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """S_α⁻¹·(mean_h − mean_b) [d_in] (module docstring); the mean difference itself at α = 1 or when
    the inputs do not vary within a kind (tr S = 0)."""
    d = harmful.mean(0) - benign.mean(0)
    if shrinkage >= 1.0:
        return d
    centred = torch.cat([harmful - harmful.mean(0), benign - benign.mean(0)]).double()  # [n, d_in]
    s = centred.T @ centred / max(len(centred) - 2, 1)  # pooled within-kind covariance [d_in, d_in]
    scale = float(s.trace()) / s.shape[0]
    if scale <= 0.0:
        return d
    s_alpha = (1.0 - shrinkage) * s + shrinkage * scale * torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    return torch.linalg.solve(s_alpha, d.double()).to(d.dtype)


def aligned_rows(a: torch.Tensor, harmful: torch.Tensor, benign: torch.Tensor,
                 shrinkage: float = 1.0) -> torch.Tensor | None:
    """The new A [r, d_in] from peft's A and the layer inputs [n_h, d_in], [n_b, d_in] that
    ``layer_inputs`` read (module docstring), along the ``discriminant`` with ``shrinkage`` α; None
    when there is no kind axis (d⊥ = 0: the two sets differ only along their mean)."""
    a = a.float()
    m = torch.cat([harmful, benign]).mean(0)
    m_hat = m / m.norm().clamp_min(1e-12)
    d = discriminant(harmful, benign, shrinkage)
    d_perp = d - (d @ m_hat) * m_hat
    if float(d_perp.norm()) <= 1e-8 * float(d.norm().clamp_min(1e-30)):
        return None
    axis = d_perp / d_perp.norm() * a[0].norm()  # [d_in]
    return axis[None, :] + NOISE * (a - (a @ m_hat)[:, None] * m_hat[None, :])  # [r, d_in]


@torch.no_grad()
def align_lora(model, tokenizer, harmful: Sequence[str], benign: Sequence[str], device, at: str = "mean",
               shrinkage: float = 1.0) -> int:
    """Set every active LoRA A as ``aligned_rows`` says (with ``shrinkage``), from the inputs read ``at`` (``AT``); returns
    how many layers changed. Layers whose kind axis vanishes (e.g. the first layer's last position,
    the same token for every prompt) keep peft's A. With several processes the A matrices are
    averaged over them, so every process starts from the same adapter even where their forward
    passes round differently."""
    from components.core import dist

    xh = layer_inputs(model, tokenizer, list(harmful), device, at=at)
    xb = layer_inputs(model, tokenizer, list(benign), device, at=at)
    weights, changed = [], 0
    for m, h, b in zip(_layers(model), xh, xb):
        weight = m.lora_A[m.active_adapters[0]].weight  # [r, d_in]
        rows = aligned_rows(weight, h, b, shrinkage)
        if rows is not None:
            weight.copy_(rows.to(weight.dtype))
            changed += 1
        weights.append(weight)
    dist.sum_(weights)  # one process: nothing
    for w in weights:
        w.div_(dist.world())
    return changed
