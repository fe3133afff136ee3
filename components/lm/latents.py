"""Pooled hidden states of a causal LM: the one encoder used by extraction, RL rewards and audit.

Layer convention (as in HF): ``hidden_states[0]`` is the embedding output and ``hidden_states[i]``
the output of decoder layer i, so with L layers the valid indices are 0..L; negative indices count
from the end (-1 = last layer, after the final norm in Llama/Qwen models).

The text encoded is the chat-rendered prompt followed by the completion (trace). The pipeline pools
prompt and completion (``pool_over="all"``, params.yaml ``extract``): the head must see what was
asked to tell a correct refusal from an over-refusal. ``pool_over="completion"`` pools the trace
only (a prompt's safe and unsafe traces share the prompt, which dilutes their contrast). The forward runs the decoder backbone
only (no LM head: no [B, T, vocab] logits) and keeps just the requested layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from components.lm.generation import render

POOLINGS = ("mean", "last", "max")
POOL_OVER = ("completion", "all")


@dataclass(frozen=True)
class LatentSpec:
    """How hidden states become one vector per text; stored with every head that uses them."""

    layers: tuple[int, ...] = (-1,)
    pooling: str = "mean"
    pool_over: str = "completion"
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: use one of {POOLINGS}.")
        if self.pool_over not in POOL_OVER:
            raise ValueError(f"pool_over={self.pool_over!r}: use one of {POOL_OVER}.")
        if not self.layers:
            raise ValueError("layers is empty: name at least one layer (-1 = last).")

    @classmethod
    def from_dict(cls, d: dict) -> "LatentSpec":
        """The inverse of ``dataclasses.asdict`` (JSON stores the layer tuple as a list)."""
        return cls(tuple(d["layers"]), d["pooling"], d["pool_over"], d["max_length"])


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``hidden`` [B, T, d] over positions where ``mask`` [B, T] is 1 → [B, d].

    Padding-aware for either padding side: ``last`` takes the right-most masked position.
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [B, T]
    last = (positions * mask.long()).amax(1)  # [B] index of the last masked token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def backbone(model):
    """The decoder stack without the LM head (``LlamaModel`` inside ``LlamaForCausalLM``).

    Works through a peft wrapper: LoRA layers live inside the decoder, so the adapter (and
    ``disable_adapter()``) still applies.
    """
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    return decoder if decoder is not None else model


def tokenize_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str], spec: LatentSpec,
                   device) -> dict[str, torch.Tensor]:
    """Left-padded ids of render(prompt)+completion and the mask of the positions to pool."""
    rendered = [render(tokenizer, p) for p in prompts]
    full = [r + c for r, c in zip(rendered, completions)]
    enc = tokenizer(full, return_tensors="pt", padding=True, truncation=True,
                    max_length=spec.max_length, add_special_tokens=False)
    attn = enc["attention_mask"]  # [B, T], left padding → real tokens at the right end
    if spec.pool_over == "all":
        pool_mask = attn.clone()
    else:
        n_prompt = torch.tensor([len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered])
        n_real = attn.sum(1)
        n_completion = (n_real - n_prompt).clamp(min=1)  # ≥ 1 token even if the completion was cut
        positions = torch.arange(attn.shape[1]).expand_as(attn)  # [B, T]
        pool_mask = (positions >= attn.shape[1] - n_completion.unsqueeze(1)).long() * attn
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": attn.to(device),
            "pool_mask": pool_mask.to(device)}


def encode(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], spec: LatentSpec,
           device, grad: bool = False) -> torch.Tensor:
    """Pooled states [B, n_layers, d] (float32) of prompt+completion, one forward, no LM head."""
    batch = tokenize_pairs(tokenizer, prompts, completions, spec, device)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        out = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=spec.layers != (-1,), use_cache=False)
        states = [out.last_hidden_state] if spec.layers == (-1,) else [out.hidden_states[i] for i in spec.layers]
        pooled = [pool(h.float(), batch["pool_mask"], spec.pooling) for h in states]  # each [B, d]
    return torch.stack(pooled, dim=1)


def _layer_states(out, layers: tuple[int, ...]) -> torch.Tensor:
    """[B, T, n_layers, d] float32 from a backbone forward (the layers ``encode`` pools)."""
    states = [out.last_hidden_state] if layers == (-1,) else [out.hidden_states[i] for i in layers]
    return torch.stack([h.float() for h in states], dim=2)


def prefix_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, spec: LatentSpec
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled state after every completion position, and before the first one.

    hidden [B, T, n_layers, d] with T = Tp + Tn (left-padded prompt, then completion), attention_mask
    [B, T]. The pooling window W is the real tokens (mask 1) from the first prompt token
    (``pool_over="all"``) or the first completion token (``"completion"``). For completion position
    t (sequence position Tp + t) the pooled state is ``pool`` over W ∩ [0, Tp + t]:
        mean: Σ_{s∈W, s≤Tp+t} h_s / |W ∩ [0, Tp+t]|     (cumsum; accumulated in float64)
        max:  max_{s∈W, s≤Tp+t} h_s                      (cummax)
        last: h at the right-most s ∈ W with s ≤ Tp+t     (cummax of positions, then gather)
    Masked positions (after EOS) contribute nothing, so the state carries over unchanged.
    Returns (states [B, Tn, n_layers, d], start [B, n_layers, d]); start pools the prompt alone
    (``"all"``) or is zeros (``"completion"``: the window is still empty).
    """
    tp = prompt_len
    window = attention_mask.bool().clone()  # [B, T]
    if spec.pool_over == "completion":
        window[:, :tp] = False
    w = window[..., None, None]  # [B, T, 1, 1]
    if spec.pooling == "mean":
        # where, not ·mask: a padded row's state may be NaN; float64 only where it accumulates
        prompt_sum = torch.where(w[:, :tp], hidden[:, :tp], 0.0).sum(1, keepdim=True, dtype=torch.float64)
        sums = prompt_sum + torch.where(w[:, tp:], hidden[:, tp:], 0.0).double().cumsum(1)  # [B, Tn, L, d]
        counts = window.double().cumsum(1)[..., None, None].clamp(min=1.0)  # [B, T, 1, 1]
        states = (sums / counts[:, tp:]).float()
        start = (prompt_sum[:, 0] / counts[:, tp - 1]).float()
    elif spec.pooling == "max":
        x = hidden.masked_fill(~w, torch.finfo(hidden.dtype).min)
        prompt_max = x[:, :tp].amax(1)  # [B, L, d]
        states = torch.maximum(torch.cummax(x[:, tp:], dim=1).values, prompt_max[:, None])
        start = prompt_max
    else:  # last
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(window)  # [B, T]
        latest = torch.where(window, positions, -1).cummax(1).values.clamp(min=0)  # [B, T]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]  # [B, 1]
        states = hidden[rows, latest[:, tp:]]  # [B, Tn, L, d]
        start = hidden[rows[:, 0], latest[:, tp - 1]]  # [B, L, d]
    if spec.pool_over == "completion":
        start = torch.zeros_like(start)
    return states, start


def prefix_pooled_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                         spec: LatentSpec, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position pooled states of given token ids (a rollout: left-padded prompt of width
    ``prompt_len``, then the completion): one backbone forward, no re-tokenisation.

    Returns (states [B, Tn, n_layers, d], start [B, n_layers, d]) float32, see ``prefix_pool``;
    states[:, t] is what ``encode`` gives for the sequence cut after completion token t.
    Position ids count real tokens (as the rollout's log-prob forward does); with rotary
    embeddings this equals ``encode``'s forward, which only shifts every position by the padding.
    """
    ids, attn = input_ids.to(device), attention_mask.to(device)
    with torch.inference_mode():
        position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        out = backbone(model)(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                              output_hidden_states=spec.layers != (-1,), use_cache=False)
        return prefix_pool(_layer_states(out, spec.layers), attn, prompt_len, spec)
