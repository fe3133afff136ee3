"""Two RL stages side by side vs one at a time: is the pipeline faster running train_rl and
train_rl_text together, each on half the cores, and do they then train the same adapters?

Peers, measured in this run on the same RL step (``components.rl.loop.rl_step``, the pipeline's
shape: 3 harmful + 1 benign prompt × 8 completions × 32 tokens, LoRA r=8 on q/k/v/o):
- one stage alone on ``--threads`` torch threads (how `craft run` runs them today);
- two stages at once, each on ``--threads // 2`` (at least 1), started together.
Printed: median seconds a step, steps a second for the whole machine, that throughput's ratio to
the stage alone, and whether the LoRA weights after the steps are bit-identical to the alone
run's (thread count changes the reduction order of the backward pass on CPU: if they differ, a
side-by-side pipeline trains different adapters than a sequential one from the same seed).

    python benchmarks/bench_side_by_side.py --model smollm2 --steps 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def worker(args) -> dict:
    """``args.steps`` timed RL steps (after one warm-up) on ``args.threads``; their times and a
    hash of the trained LoRA weights."""
    from benchmarks.bench_rl_step import setup
    from components.head.model import SafetyHead
    from components.lm.latents import LatentSpec
    from components.rl import checkpoint
    from components.rl import loop as rl_loop
    from components.train_rl import TrainRLConfig

    torch.set_num_threads(args.threads)
    lm, _ = common.load(args.model, args.device, args.dtype)
    lm.tokenizer.padding_side = "left"
    torch.manual_seed(0)
    head = SafetyHead(lm.model.config.hidden_size, 1024, 512, LatentSpec()).to(lm.device).eval()
    cfg = TrainRLConfig(steps=args.steps + 1, prompts_per_step=3, benign_per_step=1, benign_candidates=1,
                        group_size=8, max_new_tokens=32, minibatch_size=8, grad_accum=4, ppo_epochs=1,
                        kl_coef=0.05, lr=1e-3, lora_r=8, lora_alpha=16, judge="keyword")
    policy, value_head, opt, acc, reward = setup(cfg, lm, head)
    texts = common.prompts(64)
    pools = {"harmful": texts[:32], "benign": texts[32:]}
    times = []
    for step in range(args.steps + 1):
        t = time.perf_counter()
        rl_loop.rl_step(cfg, step, policy, lm.tokenizer, value_head, opt, acc, reward, pools,
                        torch.Generator().manual_seed(step))
        times.append(time.perf_counter() - t)
    digest = hashlib.sha256()
    for _, tensor in sorted(checkpoint.trainable(policy).items()):  # the LoRA A and B matrices
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return {"times": times[1:], "lora_sha": digest.hexdigest()[:16]}


def launch(args, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--device", args.device,
           "--dtype", args.dtype, "--threads", str(threads), "--steps", str(args.steps)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def collect(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a worker failed (exit {proc.returncode}); rerun it with --worker to see why")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    half = max(1, args.threads // 2)
    alone = collect(launch(args, args.threads))
    pair = [launch(args, half), launch(args, half)]
    side = [collect(p) for p in pair]
    base = 1 / statistics.median(alone["times"])
    rows = [{"peer": f"one stage alone, {args.threads} threads", "s_per_step": 1 / base,
             "steps_per_s": base, "throughput_ratio": 1.0, "same_lora_as_alone": "—"}]
    for i, run in enumerate(side):
        s = statistics.median(run["times"])
        rows.append({"peer": f"side by side #{i + 1}, {half} thread(s)", "s_per_step": s, "steps_per_s": 1 / s,
                     "throughput_ratio": "—", "same_lora_as_alone": "yes" if run["lora_sha"] == alone["lora_sha"] else "no"})
    both = sum(1 / statistics.median(run["times"]) for run in side)
    rows.append({"peer": "side by side, both together", "s_per_step": "—", "steps_per_s": both,
                 "throughput_ratio": both / base, "same_lora_as_alone": "—"})
    title = f"RL stages side by side, {args.model}, {args.steps} steps each ({common.device_name()})"
    common.publish("side_by_side", title, rows, args, steps=args.steps)


if __name__ == "__main__":
    main()
