"""Shared benchmark helpers: models by name, timing, result files, the table in docs/benchmarks.md.

Models:
- ``tiny``: the test model (hidden 32); CPU smoke runs only.
- ``smollm2``: SmolLM2-135M-Instruct from the packaged GGUF (the pipeline's default model).
- ``qwen3-4b-random``: a randomly initialised model with Qwen3-4B's shape (no weights needed), for
  GPU figures; it uses the tiny tokenizer for prompt ids (decoded text is meaningless, timings are not).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results")


def parser(doc: str | None):
    """An ArgumentParser with the options every benchmark shares: model, device, dtype, threads."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=["tiny", "smollm2", "qwen3-4b-random"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", help="auto = bfloat16 where native (as params.yaml), else float32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return ap


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name, else the architecture: CPU figures differ between machines of one
    size (docs/benchmarks.md)."""
    from components.lm.runtime import cpu_model as model_name

    return model_name()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1):
    """(result, best seconds) over ``repeats`` runs."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


class PeakRSS:
    """Peak resident set size above the size at entry, sampled every ``interval`` seconds (CPU)."""

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval, self.extra = interval, 0
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.extra = max(self.extra, self._rss() - self._base)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._base = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.extra = max(self.extra, self._rss() - self._base)


def load(kind: str, device: str, dtype: str, allocator: str = "keep"):
    """(LoadedModel, n_params) for a benchmark model; ``allocator`` as params.yaml runtime.allocator."""
    from components.core import allocator as host_memory
    from components.lm import runtime
    from components.lm import source as model_source
    from components.lm import tiny_model

    host_memory.apply(allocator)  # every kind, the random-weight one too (runtime.load does it for the others)
    torch_dtype = runtime.pick_dtype(dtype, torch.device(device))
    if kind in ("tiny", "smollm2"):
        if kind == "tiny":
            source = str(tiny_model.build(Path("/tmp/craft-bench-tiny")))
        else:
            source = "smollm2"
        cfg = model_source.ModelConfig(source=source, device=device, dtype=dtype, threads=torch.get_num_threads(),
                                       allocator=allocator)
        lm = runtime.load(model_source.resolve(cfg), cfg)
    elif kind == "qwen3-4b-random":
        from transformers import AutoModelForCausalLM, Qwen3Config

        tok = tiny_model.build_tokenizer()
        tok.padding_side = "left"
        config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        model.eval()
        lm = runtime.LoadedModel(model, tok, torch.device(device), kind)
    else:
        raise ValueError(f"unknown model {kind!r}")
    return lm, sum(p.numel() for p in lm.model.parameters())


def prompts(n: int) -> list[str]:
    """Real prompts of varied length (HarmBench + aplomb from installed wheels; synthetic fallback)."""
    try:
        from components.data.sources import read_source

        texts = [p.text for p in read_source("harmbench")] + [p.text for p in read_source("aplomb")]
    except Exception:
        texts = [" ".join(["word"] * (5 + i % 40)) for i in range(200)]
    return [texts[i % len(texts)] for i in range(n)]


def save(name: str, rows: list[dict], meta: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    slug = "gpu" if torch.cuda.is_available() else "cpu"
    path = RESULTS / f"{name}-{slug}.json"
    path.write_text(json.dumps({"benchmark": name, "date": stamp, "device": device_name(), **meta, "rows": rows}, indent=2))
    return path


def publish(name: str, title: str, rows: list[dict], args, **meta) -> Path:
    """Print ``rows`` under ``title`` and save them as ``results/<name>-<cpu|gpu>.json``, with the
    run's model, threads, dtype and command line besides ``meta``."""
    import sys

    print_rows(title, rows)
    meta = {"model": args.model, **meta, "threads": args.threads, "dtype": str(args.dtype),
            "command": " ".join(sys.argv)}
    path = save(name, rows, meta)
    print(f"saved {path}")
    return path


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))
