"""Extraction throughput and peak memory: our pooled-backbone encoder vs an
``output_hidden_states=True`` loop that runs the full model (LM head included) and keeps every
layer's states, as a user would write it. Same model, texts, batch and length, in this run.

    python benchmarks/bench_extract.py --model smollm2                           # CPU
    python benchmarks/bench_extract.py --model qwen3-4b-random --batch 16 --length 512   # GPU

Peak memory: the extra memory a peer needs above the loaded model, as the targets mean it: CUDA
max_memory_allocated minus what was allocated before, on a GPU; on CPU each peer runs in a child
process whose resident set size is sampled every 2 ms during the run, minus the size before it
(the process's whole peak, ru_maxrss, is reported too). MFU on a GPU: 2·params·tokens / time / 989 TFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.lm.latents import LatentSpec, encode  # noqa: E402

H100_BF16 = 989e12


def texts(n: int, length: int) -> tuple[list[str], list[str]]:
    base = common.prompts(n)
    return base, [(" ".join([p] * 64))[: length * 4] for p in base]  # ~length tokens of trace


def all_layers(lm, prompts, traces, batch, length):
    """Peer: full forward with output_hidden_states=True, keeping all layers, mean-pooled after."""
    from components.lm.generation import render

    kept = []
    for i in range(0, len(prompts), batch):
        enc = lm.tokenizer([render(lm.tokenizer, p) + t for p, t in zip(prompts[i:i + batch], traces[i:i + batch])],
                           return_tensors="pt", padding=True, truncation=True, max_length=length,
                           add_special_tokens=False).to(lm.device)
        with torch.inference_mode():
            out = lm.model(**enc, output_hidden_states=True)
        m = enc["attention_mask"].unsqueeze(-1).to(out.hidden_states[0].dtype)
        kept.append([((h * m).sum(1) / m.sum(1)).float().cpu() for h in out.hidden_states])
    return kept


def ours(lm, prompts, traces, batch, length):
    spec = LatentSpec(layers=(-1,), pooling="mean", pool_over="all", max_length=length)
    return [encode(lm.model, lm.tokenizer, prompts[i:i + batch], traces[i:i + batch], spec, lm.device).cpu()
            for i in range(0, len(prompts), batch)]


def measure(peer: str, args) -> dict:
    lm, n_params = common.load(args.model, args.device, args.dtype)
    prompts, traces = texts(args.n, args.length)
    fn = all_layers if peer == "all_layers" else ours
    fn(lm, prompts[: args.batch], traces[: args.batch], args.batch, args.length)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with common.PeakRSS() as rss:
        _, seconds = common.timed(lambda: fn(lm, prompts, traces, args.batch, args.length))
    n_tokens = sum(len(lm.tokenizer(p + t, add_special_tokens=False)["input_ids"][: args.length])
                   for p, t in zip(prompts, traces))
    row = {"peer": peer, "seq_per_s": args.n / seconds, "tokens": n_tokens}
    if torch.cuda.is_available():
        row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        row["mfu"] = 2 * n_params * n_tokens / seconds / H100_BF16
    else:
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row["peak_extra_gib"] = rss.extra / 2**30  # above the resident size with the model loaded
    return row


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--peer", choices=["all_layers", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.peer:  # child process: measure one peer, print JSON
        print(json.dumps(measure(args.peer, args)))
        return
    rows = []
    for peer in ("all_layers", "ours"):
        if torch.cuda.is_available():
            rows.append(measure(peer, args))
        else:  # separate processes so each peak RSS is its own
            out = subprocess.run([sys.executable, __file__, "--peer", peer] + sys.argv[1:], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mem = "peak_extra_gib"
    for r in rows:
        r["throughput_vs_all_layers"] = r["seq_per_s"] / rows[0]["seq_per_s"]
        r["memory_vs_all_layers"] = r[mem] / rows[0][mem]
    common.print_rows(f"extraction, {args.model}, batch {args.batch} × {args.length} tokens ({common.device_name()})", rows)
    meta = {"model": args.model, "batch": args.batch, "length": args.length, "n": args.n, "dtype": args.dtype,
            "command": " ".join(sys.argv)}
    print(f"saved {common.save('extract', rows, meta)}")


if __name__ == "__main__":
    main()
