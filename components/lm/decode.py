"""Our decode loop: one prefill, then one-token steps on a static KV cache, no per-step host work.

Why not ``model.generate``: each of its steps runs logits processors, stopping criteria, a host
sync on "all finished?" and (with the default dynamic cache) a ``torch.cat`` of every layer's K/V
plus a fresh 4D mask. On a 2-core CPU that overhead is ~30% of a SmolLM2 step; on a GPU, where a
decode step is ~3 ms of memory traffic, it is most of the step.

Here, for B rows of left-padded prompts of width P and N new tokens (cache length L ≥ P + N):
- ``key_ok`` [B, L] marks real keys: the prompt's attention mask, then every generated slot;
- prefill: one forward over [B, P] with the 4D mask ``key_ok ∧ causal`` [B, 1, P, L] (a pad query
  also sees itself, so no softmax row is empty and no NaN reaches the cache);
- step t: token [B, 1] at cache slot P + t, position ``n_real + t`` per row, mask
  ``key_ok ∧ (slot ≤ P + t)`` [B, 1, 1, L]; all of it computed on the device from a slot tensor;
- sampling (argmax, or temperature → top-p → an inverse-CDF draw) stays on the device; rows that emitted
  EOS continue with pad, exactly as ``generate`` does; "all rows done?" is read back only every
  ``check_every`` steps.
On CUDA the step is captured once per (B, L) as a CUDA graph and replayed (L is rounded up to a
multiple of 64 so batches share graphs); anything that cannot be captured falls back to eager.
Greedy tokens equal ``generate``'s (tests/test_decode.py).
"""
from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

GRAPH_BUCKET = 64
"""Cache lengths are rounded up to a multiple of this on CUDA so prompts of similar width reuse a graph."""


NUCLEUS_K = 256
"""First width tried for the top-p set on a CPU (it doubles until the set fits): a trained LM's
nucleus is far narrower than its vocabulary, so a top-k replaces the full sort."""


@dataclass(frozen=True)
class Sampling:
    """Token choice per step: temperature 0 → argmax; else temperature, top-p, then a draw."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row [B] from last-position logits [B, V]."""
        if self.temperature <= 0:
            return logits.float().argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, -1)  # [B, V]
        if self.top_p >= 1.0:
            return draw(probs, self.generator)
        kept, ids = nucleus(probs, self.top_p)  # [B, k] each
        return ids.gather(1, draw(kept, self.generator)[:, None]).squeeze(1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row [B] from non-negative weights [B, K], with probability weight / row sum.

    Inverse CDF: u ~ U[0, total), then the first index whose running sum exceeds u; if rounding
    puts u at the total, the last index with weight. So a zero weight is never drawn. The same law
    as ``torch.multinomial(probs, 1)``, which spends ~33 ms per step on a [32, 49152] CPU batch
    against ~4 ms here (docs/benchmarks.md). The running sum is float64, so a 49k vocabulary's tail
    tokens keep their share. NaN, infinite or all-zero weights (diverged logits) raise.
    """
    cdf = probs.double().cumsum(-1)  # [B, K]
    total = cdf[:, -1:]  # [B, 1]
    usable = (torch.isfinite(total) & (total > 0)).all()
    if cdf.is_cuda:
        torch._assert_async(usable, "sampling weights are NaN, infinite or all zero")  # no host read
    elif not bool(usable):
        raise ValueError("sampling weights are NaN, infinite or all zero: the model's logits diverged")
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * total
    idx = torch.searchsorted(cdf, u, right=True).squeeze(1)  # [B]
    last = (cdf < total).sum(-1)  # [B] first index whose running sum reaches the total: weight > 0
    return torch.minimum(idx, last)


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p set of HF's TopPLogitsWarper: (weights [B, k], most likely first and zero outside
    the set; their token ids [B, k]) from probabilities [B, V], for 0 < top_p ≤ 1.

    A token stays when the tokens ranked above it hold less than ``top_p`` of the mass; the most
    likely one always stays. On a CPU the top ``NUCLEUS_K`` are tried first and the width doubles
    until every row's kept set ends inside it (a full sort of [64, 49152] costs ~100 ms a step); on
    CUDA one full sort, which needs no host read. Running sums are float64.
    """
    v = probs.shape[-1]
    k = v if probs.is_cuda else min(NUCLEUS_K, v)
    while True:
        vals, ids = probs.topk(k, -1)  # [B, k], descending
        mass = vals.double().cumsum(-1)  # [B, k] mass of each token and those ranked above it
        above = torch.cat([torch.zeros_like(mass[:, :1]), mass[:, :-1]], -1)  # [B, k] exclusive
        if k == v or bool((mass[:, -1] >= top_p).all()):  # every row's set ends by k
            drop = above >= top_p
            drop[:, 0] = False  # the most likely token stays whatever top_p says
            return vals.masked_fill(drop, 0.0), ids
        k = min(2 * k, v)


def supported(model) -> bool:
    """Our loop passes a prepared 4D mask, which the sdpa and eager attention paths accept."""
    return getattr(model.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


class _Session:
    """One (B, L) shape: the static cache, the step's input buffers and, on CUDA, its graph."""

    def __init__(self, model, batch: int, length: int, device: torch.device, use_graph: bool):
        from transformers import StaticCache

        self.model, self.length, self.device = model, length, device
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.key_ok = torch.zeros(batch, length, dtype=torch.bool, device=device)  # real keys
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)          # prompt tokens per row
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)       # step input
        self.slot = torch.zeros(1, dtype=torch.long, device=device)               # cache slot of the step
        self.width = torch.zeros(1, dtype=torch.long, device=device)              # P, read by the graph
        self.slots = torch.arange(length, device=device)
        self.use_graph, self.graph, self.logits = use_graph, None, None

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """bool [.., L] → additive mask in the model's dtype (0 keeps, dtype-min drops): accepted by
        the sdpa and eager attention paths alike, and no per-layer bool→float conversion."""
        dtype = self.model.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Fill cache slots [0, P) from the left-padded prompts; last-position logits [B, V]."""
        b, p = input_ids.shape
        self.width.fill_(p)
        self.cache.reset()  # the layers' write offset (a device counter) back to slot 0
        self.key_ok.fill_(True)
        self.key_ok[:, :p] = attention_mask.bool()
        self.n_real.copy_(attention_mask.sum(1))
        q = torch.arange(p, device=self.device)
        causal = q[:, None] >= self.slots[None, :]                                   # [P, L]
        allowed = (self.key_ok[:, None, :] & causal) | (q[:, None] == self.slots[None, :])  # [B, P, L]
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)              # [B, P]
        out = self.model(input_ids=input_ids, attention_mask=self._mask(allowed[:, None]), position_ids=positions,
                         cache_position=q, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _step(self) -> torch.Tensor:
        """One token per row at cache slot ``self.slot``; logits [B, V]. Graph-safe: no host reads."""
        allowed = self.key_ok & (self.slots <= self.slot)                      # [B, L]
        positions = self.n_real[:, None] + (self.slot - self.width)            # [B, 1]
        out = self.model(input_ids=self.token, attention_mask=self._mask(allowed[:, None, None, :]),
                         position_ids=positions, cache_position=self.slot, past_key_values=self.cache,
                         use_cache=True)
        return out.logits[:, -1]

    def step(self, token: torch.Tensor, slot: int) -> torch.Tensor:
        self.token.copy_(token[:, None])
        self.slot.fill_(slot)
        if self.use_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._step()

    def _capture(self) -> None:
        """Record ``_step`` as a CUDA graph (warm-up on a side stream first, as CUDA requires)."""
        offsets = _write_offsets(self.cache)
        if offsets is None:  # e.g. sliding-window layers keep their offset on the host
            self.use_graph = False
            return
        saved = [o.clone() for o in offsets]
        try:
            self.graph, self.logits = capture_graph(self._step)
        except Exception as exc:  # an op that cannot be captured: stay correct, run eager
            log.warning("CUDA graph capture failed (%s); decoding eagerly", exc)
            self.use_graph, self.graph, self.logits = False, None, None
            torch.cuda.synchronize()
        for o, v in zip(offsets, saved):  # warm-up steps advanced the write offsets: undo
            o.copy_(v)


def capture_graph(fn):
    """(graph, output): ``fn`` recorded as a CUDA graph after two warm-up runs on a side stream
    (as CUDA requires). ``graph.replay()`` re-runs it, rewriting ``output`` in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _write_offsets(cache) -> list[torch.Tensor] | None:
    """Each layer's device-side write offset (StaticLayer.cumulative_length), or None if any layer
    keeps its offset on the host, which a CUDA graph could not advance."""
    offsets = [getattr(layer, "cumulative_length", None) for layer in cache.layers]
    if not all(isinstance(o, torch.Tensor) for o in offsets) or any(hasattr(l, "cumulative_length_int") for l in cache.layers):
        return None
    return offsets


@contextmanager
def _contiguous_head_input(model):
    """Feed the LM head a contiguous input while decoding. Prefill keeps only the last position,
    ``hidden[:, -1:]``, a strided view; on CPU a bf16 ``linear`` on such a 3D view falls back to a
    batched matmul over a B-fold copy of the head weight (0.3 s instead of 4 ms for SmolLM2 at B = 8)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class DecodeEngine:
    """Batched decoding for one model; keeps a session (cache + graph) per (batch, length) shape."""

    def __init__(self, model, use_graphs: bool | None = None, max_sessions: int = 4):
        self.model = model
        self.device = next(model.parameters()).device
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        self.max_sessions = max_sessions
        self._sessions: dict[tuple[int, int], _Session] = {}

    def _session(self, batch: int, needed: int) -> _Session:
        length = -(-needed // GRAPH_BUCKET) * GRAPH_BUCKET if self.use_graphs else needed
        key = (batch, length)
        if key not in self._sessions:
            if len(self._sessions) >= self.max_sessions:
                self._sessions.pop(next(iter(self._sessions)))  # oldest shape goes
            self._sessions[key] = _Session(self.model, batch, length, self.device, self.use_graphs)
        return self._sessions[key]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
                 eos_ids: list[int], pad_id: int, sampling: Sampling = Sampling(), ignore_eos: bool = False,
                 check_every: int = 8) -> torch.Tensor:
        """New tokens [B, n ≤ max_new_tokens] for left-padded prompts; pad after each row's EOS.

        Stops early (n < max_new_tokens) once every row has emitted EOS, as ``generate`` does.
        """
        b, p = input_ids.shape
        with _contiguous_head_input(self.model):
            return self._generate(self._session(b, p + max_new_tokens), input_ids, attention_mask, max_new_tokens,
                                  eos_ids, pad_id, sampling, ignore_eos, check_every)

    def _generate(self, session, input_ids, attention_mask, max_new_tokens, eos_ids, pad_id, sampling, ignore_eos,
                  check_every) -> torch.Tensor:
        b, p = input_ids.shape
        eos = torch.tensor(eos_ids, device=self.device)
        out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        width = torch.zeros((), dtype=torch.long, device=self.device)  # steps taken while any row was live
        token = sampling.pick(session.prefill(input_ids, attention_mask))
        for t in range(max_new_tokens):
            width += (~done).any()
            token = torch.where(done, pad_id, token)
            out[:, t] = token
            if not ignore_eos:
                done |= torch.isin(token, eos)
            if t == max_new_tokens - 1 or ((t + 1) % check_every == 0 and bool(done.all())):
                break
            token = sampling.pick(session.step(token, p + t))
        return out[:, : int(width)]  # the one host read of the width: drop columns after the last EOS


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def engine_for(model, tag: str = "") -> DecodeEngine:
    """The model's engine for state ``tag``, kept while the model lives so its CUDA graphs are
    reused across calls (a graph bakes in the weights and adapter switches of its capture)."""
    engines = _ENGINES.setdefault(model, {})
    if tag not in engines:
        engines[tag] = DecodeEngine(model)
    return engines[tag]
