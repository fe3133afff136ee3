"""Host memory kept for reuse vs glibc's default (params.yaml ``runtime.allocator``: keep | system).

glibc unmaps every freed block above its mmap threshold, so each forward and backward on a CPU
has the kernel map and zero-fill its activations afresh (components/core/allocator.py). Peers,
each in a child process of its own (the allocator is per process), measured in this run on the
same model, inputs and threads:
- ``system``: the C library's default;
- ``keep``: ``M_MMAP_MAX = 0`` and a 2 GiB trim threshold (the pipeline's default).
Workloads, the shapes of pipeline stages: ``encode`` (extract: pooled backbone states, 16 rows ×
384 tokens), ``sft`` (train_sft: a LoRA r=8 q/k/v/o training step, 8 rows × 256 tokens, loss,
backward, AdamW) and ``rl`` (train_rl: one RL step, 3 harmful + 1 benign prompt × 8 completions
× 32 tokens) and ``evaluate`` (evaluate: greedy replies of 48 tokens to 256 prompts, batched as
params.yaml's evaluate section batches them). Printed per workload and peer: median seconds a call, the CPU seconds spent in user
and kernel mode, minor page faults and peak RSS (GiB) of the child, the time ratio system / keep, and
whether the outputs (pooled states; LoRA weights after the steps) are bit-identical between peers.

    python benchmarks/bench_allocator.py --model smollm2 --repeats 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

WORKLOADS = ("encode", "sft", "rl", "evaluate")


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _encode(lm, repeats: int):
    """extract's shape: pooled states of 16 prompt + ~384-token trace rows; the digest hashes the last call's."""
    from components.lm.latents import LatentSpec, encode

    texts = common.prompts(16)
    traces = [(" ".join([p] * 64))[: 384 * 4] for p in texts]  # ~384 tokens a row
    spec = LatentSpec(pool_over="all", max_length=384)
    calls = [lambda: encode(lm.model, lm.tokenizer, texts, traces, spec, lm.device)] * (repeats + 1)
    return calls, lambda outs: _digest(outs[-1:])


def _sft(lm, repeats: int):
    """train_sft's shape: LoRA training steps on 8 rows × 256 tokens; the digest hashes the LoRA weights after them."""
    from components.rl import checkpoint
    from components.rl.policy import LoraSpec, wrap_lora

    torch.manual_seed(0)
    policy = wrap_lora(lm.model, LoraSpec(r=8, alpha=16), 0)
    opt = torch.optim.AdamW(list(checkpoint.trainable(policy).values()), lr=5e-4)
    enc = lm.tokenizer([(" ".join([p] * 64))[: 256 * 4] for p in common.prompts(8)], return_tensors="pt",
                       padding="max_length", truncation=True, max_length=256)

    def step():
        policy.train()
        loss = policy(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=enc["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return [step] * (repeats + 1), lambda _: _digest(checkpoint.trainable(policy).values())


def _rl(lm, repeats: int):
    """train_rl's shape: RL steps (``rl_loop.rl_step``); the digest hashes the LoRA weights after them."""
    from benchmarks.bench_rl_step import setup
    from components.head.model import SafetyHead
    from components.lm.latents import LatentSpec
    from components.rl import checkpoint
    from components.rl import loop as rl_loop
    from components.train_rl import TrainRLConfig

    torch.manual_seed(0)
    head = SafetyHead(lm.model.config.hidden_size, 1024, 512, LatentSpec()).to(lm.device).eval()
    cfg = TrainRLConfig(steps=repeats + 1, prompts_per_step=3, benign_per_step=1, benign_candidates=1, group_size=8,
                        max_new_tokens=32, minibatch_size=8, grad_accum=4, ppo_epochs=1, kl_coef=0.05, lr=1e-3,
                        lora_r=8, lora_alpha=16, judge="keyword")
    policy, value_head, opt, acc, reward = setup(cfg, lm, head)
    texts = common.prompts(64)
    pools = {"harmful": texts[:32], "benign": texts[32:]}

    def step(s):
        return lambda: rl_loop.rl_step(cfg, s, policy, lm.tokenizer, value_head, opt, acc, reward, pools,
                                       torch.Generator().manual_seed(s))

    return [step(s) for s in range(repeats + 1)], lambda _: _digest(checkpoint.trainable(policy).values())


def _evaluate(lm, repeats: int):
    """evaluate's batching: greedy 48-token replies to 256 prompts; the digest hashes the last call's texts."""
    from components.lm import generation

    texts = common.prompts(256)
    params = generation.SamplingParams(max_new_tokens=48, batch_size=256, batch_tokens=12288, ignore_eos=True)
    return [lambda: generation.generate(lm, texts, params)] * (repeats + 1), lambda outs: _text_digest(outs[-1])


def _text_digest(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def worker(args) -> dict:
    """One peer on one workload: a warm-up call, then ``repeats`` timed ones."""
    torch.set_num_threads(args.threads)
    lm, _ = common.load(args.model, args.device, args.dtype, allocator=args.allocator)
    lm.tokenizer.padding_side = "left"
    calls, digest = {"encode": _encode, "sft": _sft, "rl": _rl, "evaluate": _evaluate}[args.workload](lm, args.repeats)
    outs, times = [calls[0]()], []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for call in calls[1:]:
        t = time.perf_counter()
        outs.append(call())
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"s": statistics.median(times), "user_s": (r1.ru_utime - r0.ru_utime) / len(times),
            "sys_s": (r1.ru_stime - r0.ru_stime) / len(times), "minflt": (r1.ru_minflt - r0.ru_minflt) // len(times),
            "peak_rss_gib": r1.ru_maxrss / 2**20, "digest": digest(outs)}


def run_peer(args, workload: str, allocator: str) -> dict:
    """``worker``'s result for one peer, run in a child process (the allocator is set per process)."""
    cmd = [sys.executable, __file__, "--worker", "--workload", workload, "--allocator", allocator, "--model",
           args.model, "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {workload}/{allocator} worker failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Both peers on every workload asked for, one child process each; prints and saves the table."""
    ap = common.parser(__doc__)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls a peer, after one warm-up")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--allocator", default="keep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for workload in args.workloads:
        peers = {a: run_peer(args, workload, a) for a in ("system", "keep")}
        for name, r in peers.items():
            rows.append({"workload": workload, "allocator": name, "s_per_call": r["s"], "user_s": r["user_s"],
                         "kernel_s": r["sys_s"], "minor_faults": r["minflt"], "peak_rss_gib": r["peak_rss_gib"],
                         "time_ratio_vs_keep": r["s"] / peers["keep"]["s"],
                         "same_output": "yes" if r["digest"] == peers["system"]["digest"] else "no"})
    title = f"allocator: system vs keep, {args.model}, {args.repeats} calls each ({common.device_name()})"
    common.publish("allocator", title, rows, args, repeats=args.repeats)


if __name__ == "__main__":
    main()
