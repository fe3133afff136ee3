"""The adapter RL starts from: peft's LoRA, aligned by the probe (``lora_init: probe``,
``components.rl.probe_init``), then gated (``gate_steps``, ``components.rl.gate``), or read from
the cache folder a run with the same key filled (``components.train_rl.gate_dir``).

``cfg`` is a ``components.rl.config.TrainRLConfig``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable

import torch

from components.core import dist
from components.rl import gate, probe_init

log = logging.getLogger("craft.train_rl")


def align_probe(cfg, policy, tokenizer, harmful: list[str], benign: list[str], device) -> None:
    """``lora_init: probe``: LoRA A rows read the harmful − benign axis of the train prompts' layer
    inputs, taken where ``probe_at`` says (``last``: the last prompt position; ``mean``: over the
    prompt; components/rl/probe_init.py); with no benign train prompts peft's A stays, with a warning."""
    if not benign:
        log.warning("train_rl.lora_init=probe needs benign train prompts to contrast with, and the prompts have "
                    "none: keeping peft's random LoRA A (set lora_init: random to silence this).")
        return
    probe_init.align_lora(policy, tokenizer, harmful, benign, device, cfg.probe_at, cfg.probe_shrinkage)


def start_adapter(cfg, policy, tokenizer, pools: dict[str, list[str]], accelerator,
                  hook: Callable[[int, dict], None] | None, cache: Path | None) -> dict[str, float]:
    """Make ``policy``'s LoRA the adapter RL starts from: probe-aligned (``lora_init: probe``), then
    gated (``gate_steps``), or loaded from ``cache`` when a run with the same key made it (the main
    process decides, every process loads). A computed one is kept there unless it drew from the
    process-wide RNGs (LoRA dropout in the gate): the RL after it would then sample differently
    from a run that loads it. Returns the gate's summary; ``hook`` sees its steps, read or run."""
    unwrapped = accelerator.unwrap_model(policy)
    if cache is not None and dist.gather(gate.cached(cache))[0]:
        seen = gate.load(cache, unwrapped)
        for g, m in enumerate(seen if hook else []):
            hook(g, m)
        log.info("start adapter read from %s (%d gate steps)", cache, len(seen))
        return gate.summary(seen)
    before = rng_states()
    if cfg.lora_init == "probe":  # deterministic, the same on every process
        align_probe(cfg, unwrapped, tokenizer, pools["harmful"], pools["benign"], accelerator.device)
    seen = gate.pretrain(cfg, policy, tokenizer, pools, accelerator, hook) if cfg.gate_steps > 0 else []
    drew = rng_states() != before
    if cache is not None and accelerator.is_main_process and not drew:
        gate.save(cache, unwrapped, seen)
    return gate.summary(seen)


def rng_states() -> tuple:
    """The process-wide RNG states (torch CPU and CUDA as bytes, Python's ``random``), comparable with ``==``."""
    cuda = [bytes(t.tolist()) for t in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return bytes(torch.get_rng_state().tolist()), tuple(cuda), random.getstate()
