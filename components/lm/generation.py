"""One batched generation engine for curation, RL rollouts and evaluation.

Prompts are rendered with the tokenizer's chat template, sorted by length so each batch pads
little, left-padded, and decoded by ``components.lm.decode`` (``model.generate`` as the fallback).
Results come back in input order.
Reasoning models write ``<think>…</think>`` before the answer; ``split_reasoning`` separates them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from components.lm import decode
from components.lm.source import ENGINES
from components.lm.runtime import LoadedModel

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions."""

    max_new_tokens: int = 96
    batch_size: int = 16
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""
    """Optional system message; empty keeps the chat template's default."""
    ignore_eos: bool = False
    """Always generate ``max_new_tokens`` (benchmarks: equal work for every peer)."""
    batch_tokens: int = 0
    """Most tokens one batch may hold, rows × (its longest prompt + ``max_new_tokens``); 0 = no
    limit (every batch ``batch_size`` rows). With a limit, long prompts decode in smaller batches
    and short ones in up to ``batch_size`` rows (``batches``)."""
    engine: str = ""
    """Empty: the loaded model's (params.yaml ``model.engine``). ``ours``: components.lm.decode
    (static KV cache, no per-step host work, CUDA graphs on CUDA); ``hf``: ``model.generate`` (the
    fallback; static cache on CUDA). Models whose attention takes no prepared 4D mask always use ``hf``."""

    def __post_init__(self):
        if self.engine and self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}: use one of {ENGINES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: use 1 or more rows a batch")
        if self.batch_tokens < 0:
            raise ValueError(f"batch_tokens={self.batch_tokens!r}: use 0 (no token limit) or a token count")


def hf_cache_kwargs(device) -> dict:
    """generate() kwargs for HF's path: the static cache on CUDA (3× on an H100), dynamic on CPU."""
    return {"cache_implementation": "static"} if getattr(device, "type", str(device)) == "cuda" else {}


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion (generation config first, then the tokenizer's)."""
    ids = model.generation_config.eos_token_id
    ids = tokenizer.eos_token_id if ids is None else ids
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def new_tokens(model, tokenizer, enc, max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
               generator: torch.Generator | None = None, ignore_eos: bool = False, engine: str = "ours",
               tag: str = "") -> torch.Tensor:
    """Completion token ids [B, n ≤ max_new_tokens] for a left-padded batch ``enc``, pad after EOS.

    ``tag`` names the model's state for our engine (e.g. ``merged`` LoRA): each tag keeps its own
    CUDA graphs, which bake in the weights and adapter switches they were captured with.
    ``generator`` drives sampling; the process-wide RNG is left as it was (the ``hf`` engine seeds
    ``model.generate``'s draws inside ``torch.random.fork_rng``)."""
    if engine == "ours" and decode.supported(model):
        sampling = decode.Sampling(temperature, top_p, generator)
        return decode.engine_for(model, tag).generate(enc["input_ids"], enc["attention_mask"], max_new_tokens,
                                                 eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id,
                                                 sampling=sampling, ignore_eos=ignore_eos)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **hf_cache_kwargs(enc["input_ids"].device))
    if ignore_eos:
        kwargs["min_new_tokens"] = max_new_tokens
    seed = None
    if temperature > 0:
        if generator is not None:  # generate() samples from the global RNG: seed it inside a fork
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    with torch.random.fork_rng(enabled=seed is not None), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)  # CPU and every CUDA device; fork_rng restores them on exit
        ids = model.generate(**enc, **kwargs)  # [B, T_prompt + T_new]
    return ids[:, enc["input_ids"].shape[1]:]


def render(tokenizer, user_text: str, system_prompt: str = "") -> str:
    """The model-ready prompt string (chat template, generation prompt appended)."""
    messages = [{"role": "user", "content": user_text}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}User: {user_text}\nAssistant:"


def generate(
    lm: LoadedModel, prompts: Sequence[str], params: SamplingParams, desc: str = "generate",
    prefills: Sequence[str] | None = None,
) -> list[str]:
    """Completions (decoded, special tokens dropped) for ``prompts``, in input order. ``prefills[i]``,
    when given, is placed after prompt i's rendered turn as the start of the reply, and the model
    writes on from it; the returned completion is what it wrote, without the prefill. (For a model
    that reasons in ``<think>`` first, the prefill opens the reasoning, not the answer.)"""
    tok, model = lm.tokenizer, lm.model
    texts = [render(tok, p, params.system_prompt) for p in prompts]
    if prefills is not None:
        if len(prefills) != len(texts):
            raise ValueError(f"prefills: one per prompt ({len(texts)}), got {len(prefills)}.")
        # a chat template ends its turn with a newline; the plain "…Assistant:" form needs a space
        texts = [t + f if not t or t[-1].isspace() else f"{t} {f}" for t, f in zip(texts, prefills)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    gen = torch.Generator(device=lm.device).manual_seed(params.seed)
    bar = tqdm(total=len(texts), desc=desc, unit="prompt", leave=False)
    lengths = None
    if params.batch_tokens and texts:
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    for idx in batches(order, params.batch_size, lengths, params.batch_tokens, params.max_new_tokens):
        batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(lm.device)
        new = new_tokens(model, tok, batch, params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                         generator=gen, ignore_eos=params.ignore_eos, engine=params.engine or lm.engine)
        for i, row in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
            out[i] = row.strip()
        bar.update(len(idx))
    bar.close()
    return out


def batches(order: Sequence[int], batch_size: int, lengths: Sequence[int] | None = None, batch_tokens: int = 0,
            max_new_tokens: int = 0) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``batch_size`` rows. With ``lengths``
    (prompt tokens of each row) and ``batch_tokens`` > 0, a batch also stops growing before
    rows × (its longest prompt + ``max_new_tokens``) exceeds ``batch_tokens``: the left-padded
    [rows, T_prompt + T_new] KV cache a decode step reads. A row longer than the limit alone still
    gets a batch of its own."""
    if not batch_tokens or lengths is None:
        return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        grown = max(longest, lengths[i])  # the batch's longest prompt if row i joins
        if current and (len(current) == batch_size or (len(current) + 1) * (grown + max_new_tokens) > batch_tokens):
            out.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    return out + ([current] if current else [])


def split_reasoning(text: str) -> tuple[str, str]:
    """``(trace, response)`` of a completion.

    - ``<think>T</think>A`` → (T, A); the first ``<think>`` and the last ``</think>`` bound T, so
      nested tags stay inside the trace;
    - ``T</think>A`` (the template pre-opened the tag) → (T, A);
    - ``<think>T`` with no close (truncated) → (T, "");
    - no tags (a non-reasoning model) → (text, text): the completion is both.
    """
    open_at, close_at = text.find(THINK_OPEN), text.rfind(THINK_CLOSE)
    if open_at < 0 and close_at < 0:
        return text.strip(), text.strip()
    if close_at < 0:
        return text[open_at + len(THINK_OPEN):].strip(), ""
    start = open_at + len(THINK_OPEN) if 0 <= open_at < close_at else 0
    return text[start:close_at].strip(), text[close_at + len(THINK_CLOSE):].strip()
