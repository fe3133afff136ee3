"""The RL policy: base model + LoRA adapter (peft), rollouts, and per-token log-probs.

The reference policy is the same model with the adapter disabled, so no second copy of the weights
is held. Sequences are left-padded prompts followed by completions; ``Rollout`` keeps them
together with the completion mask (generated tokens up to and including the first EOS).
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from components.lm.generation import eos_ids, new_tokens, render


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def wrap_lora(model, spec: LoraSpec, seed: int | None):
    """Attach a fresh LoRA adapter (B = 0 at init, so the policy starts equal to the reference).

    peft draws A from the global RNG. ``seed``: A is drawn after ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng``, so the process RNG is as it was before the call. ``None``: A is drawn
    from the caller's global RNG, which advances, as any ``nn.Module`` constructor's does."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, config)


class _OneAdapter:
    """``model`` seen through ``save_pretrained`` as if ``name`` were its only adapter: peft writes
    a non-default adapter into ``<folder>/<name>/``; this moves its files up into ``folder``."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name = model, name

    def save_pretrained(self, folder: str, **kw) -> None:
        self.model.save_pretrained(folder, selected_adapters=[self.name], **kw)
        for f in (Path(folder) / self.name).iterdir():
            shutil.move(str(f), str(Path(folder) / f.name))
        (Path(folder) / self.name).rmdir()


def save_stacked(policy, first: str | Path, tokenizer, folder: str | Path, base_id: str) -> Path:
    """Save, as one LoRA adapter on the base, ``first`` (an adapter folder) followed by ``policy``'s
    own adapter, which was trained on a model with ``first`` merged into its weights:

        W' = W + s1·B1·A1 + s2·B2·A2 = W + [B1 | B2]·[s1·A1 ; s2·A2]     rank r1 + r2, scale 1

    peft's ``add_weighted_adapter(combination_type="cat")`` builds exactly this (no SVD, no loss).
    The extra adapters are removed again, so ``policy`` is left as it was."""
    from components.lm.adapters import save_adapter

    policy.load_adapter(str(first), adapter_name="init")
    try:
        policy.add_weighted_adapter(["init", "default"], [1.0, 1.0], "stacked", combination_type="cat")
        return save_adapter(_OneAdapter(policy, "stacked"), tokenizer, folder, base_id)
    finally:
        for name in ("stacked", "init"):
            if name in policy.peft_config:
                policy.delete_adapter(name)


@dataclass
class Rollout:
    input_ids: torch.Tensor        # [B, Tp + Tn]
    attention_mask: torch.Tensor   # [B, Tp + Tn]
    completion_mask: torch.Tensor  # [B, Tn]
    prompt_len: int                # Tp (left-padded prompt width)
    prompts: list[str]             # [B], each prompt repeated group_size times
    completions: list[str]         # [B] decoded


def completion_mask(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on generated tokens up to and including the first EOS, 0 after it [B, Tn]."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device)).int()
    after_first = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_first).long()


def lora_linears(model) -> list:
    """The LoRA-wrapped Linear layers whose delta is a plain s·B·A (no DoRA, one active adapter)."""
    from peft.tuners.lora import Linear as LoraLinear

    mods = [m for m in model.modules() if isinstance(m, LoraLinear)]
    simple = all(len(m.active_adapters) == 1 and not m.use_dora.get(m.active_adapters[0], False) for m in mods)
    return mods if simple else []


@contextmanager
def merged_for_decoding(model):
    """Decode with each LoRA delta folded into a shadow copy of its base weight.

    W' = W + s·B·A  (in float32, stored in the weights' dtype), written in place into one shadow
    tensor per layer that lives as long as the model, so a CUDA graph captured in this mode stays
    valid. Inside, the layers hold W' and the adapters are off: decoding runs plain Linear layers,
    without the ~6 extra ops per LoRA layer per token. W itself is never modified (merging into a
    bf16 W and unmerging would not give W back). Outside, everything is as before.
    """
    mods = lora_linears(model)
    if not mods or not hasattr(model, "disable_adapter"):
        yield
        return
    originals = []
    with torch.no_grad():
        for m in mods:
            base = m.base_layer
            shadow = getattr(m, "_craft_shadow", None)
            if shadow is None or shadow.shape != base.weight.shape:
                shadow = torch.nn.Parameter(torch.empty_like(base.weight), requires_grad=False)
                object.__setattr__(m, "_craft_shadow", shadow)  # held, not registered: no state_dict entry
            delta = m.get_delta_weight(m.active_adapters[0]).float()
            shadow.copy_(base.weight.float() + delta)
            originals.append(base.weight)
            base._parameters["weight"] = shadow
    try:
        with model.disable_adapter():
            yield
    finally:
        for m, w in zip(mods, originals):
            m.base_layer._parameters["weight"] = w


@torch.no_grad()
def rollout(model, tokenizer, prompts: Sequence[str], group_size: int, max_new_tokens: int,
            temperature: float, top_p: float, device, engine: str = "ours", stream: int = 0) -> Rollout:
    """Sample ``group_size`` completions per prompt from the current policy (one batch) with
    generation ``engine`` (params.yaml ``model.engine``). ``stream``: the process's rank, so
    processes that share the global RNG state still draw different samples."""
    asked = [p for p in prompts for _ in range(group_size)]  # grouped: p0 × G, p1 × G, …
    enc = tokenizer([render(tokenizer, p) for p in asked], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(device)
    was_training = model.training
    model.eval()
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # follows the global seed (the same on every process)
    gen = torch.Generator(device=device).manual_seed((seed + 7919 * stream) % (2**31 - 1))  # stream 0: seed
    with merged_for_decoding(model):  # same weights, fewer ops; its own CUDA graphs (tag)
        new = new_tokens(model, tokenizer, enc, max_new_tokens, temperature=temperature, top_p=top_p,
                         generator=gen, engine=engine, tag="merged")
    new = new.clone()  # a normal tensor: the update step embeds these ids with autograd on
    model.train(was_training)
    tp = enc["input_ids"].shape[1]
    cmask = completion_mask(new, eos_ids(model, tokenizer))
    out = torch.cat([enc["input_ids"], new], dim=1)
    attn = torch.cat([enc["attention_mask"], cmask], dim=1)
    texts = [t.strip() for t in tokenizer.batch_decode(new * cmask + tokenizer.pad_token_id * (1 - cmask),
                                                       skip_special_tokens=True)]
    return Rollout(out, attn, cmask, tp, asked, texts)


def forward_logprobs(model, ro: Rollout, idx: torch.Tensor | None = None, want_hidden: bool = False):
    """Per-token log-probs of the completion tokens [b, Tn] (+ logits, + last hidden states)."""
    from components.rl.formulas import token_logprobs

    ids, attn = ro.input_ids, ro.attention_mask
    if idx is not None:
        ids, attn = ids[idx], attn[idx]
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
    # The LM head runs on every position: ``logits_to_keep`` (the completion's positions only) was
    # measured 1.45x slower per RL step here (docs/stage2.md round 14).
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                output_hidden_states=want_hidden, use_cache=False)
    tp = ro.prompt_len
    logits = out.logits[:, tp - 1 : -1]  # [b, Tn, V]: position t predicts completion token t
    logp = token_logprobs(logits, ids[:, tp:])
    hidden = out.hidden_states[-1][:, tp - 1 : -1] if want_hidden else None  # [b, Tn, d]
    return logp, logits, hidden
