"""Loading a causal LM + tokenizer for inference, with device, dtype and thread control."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from components.core import allocator
from components.lm.source import ModelConfig, ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for batched generation (left padding, pad token set)."""

    model: Any
    tokenizer: Any
    device: torch.device
    model_id: str
    engine: str = "ours"
    """params.yaml ``model.engine``: how ``generation.generate`` decodes for this model."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no CUDA device is visible; use auto or cpu.")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware (not emulated through float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")


def _cpu_has(probe: str) -> bool:
    """``torch.cpu.<probe>()`` (a private feature check), False where this torch lacks it."""
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and getattr(cpu, probe, lambda: False)())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_numerics() -> str:
    """What picks this CPU's kernels, and with them bf16 results: its model name, torch's vector
    capability and whether it has AMX tiles (an AMX Xeon and an AVX512-BF16 EPYC train different
    adapters from one seed, README round 24)."""
    return f"{cpu_model()}/{torch.backends.cpu.get_cpu_capability()}/amx={_cpu_has('_is_amx_tile_supported')}"


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for params.yaml ``model.dtype`` on ``device`` (``auto`` → bf16 where native)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, name)


def load(resolved: ResolvedModel, cfg: ModelConfig) -> LoadedModel:
    """Load weights and tokenizer from ``resolved.path`` for inference. Like the thread count,
    ``cfg.allocator`` is set for the whole process (``components.core.allocator``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    allocator.apply(cfg.allocator)  # before the weights and activations are allocated
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("float16 is slow or unsupported on CPU; using float32")
        dtype = torch.float32
    local_only = cfg.offline
    tok = AutoTokenizer.from_pretrained(
        resolved.path, local_files_only=local_only, trust_remote_code=cfg.trust_remote_code
    )
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype, local_files_only=local_only,
        trust_remote_code=cfg.trust_remote_code,
    ).to(device)
    model.eval()
    tok.padding_side = "left"  # decoder-only batched generation needs left padding
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, device, resolved.model_id, cfg.engine)
