"""Guard-mode cost: greedy decoding with the per-token latent monitor + guard, one sequence at a
time and in one batch (how evaluation runs it), vs plain greedy decoding of the same model one
sequence at a time and in one batch; same prompts and lengths. Ratios are time per generated token
against plain greedy at batch 1; the batched guard also reports how many rows' tokens equal the
one-at-a-time guard's (all in float32; bfloat16 batches can flip near-tie tokens).

    python benchmarks/bench_guard.py --model smollm2 --n 32
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.eval import audit  # noqa: E402
from components.lm import generation  # noqa: E402
from components.head.model import SafetyHead  # noqa: E402
from components.lm.latents import LatentSpec  # noqa: E402


def plain(lm, prompts, new, batch=1):
    params = generation.SamplingParams(new, batch, ignore_eos=True, engine="hf")
    return generation.generate(lm, prompts, params)


FULL_COST = dict(threshold=-1.0, patience=10**9, guard=True)
"""Scores every token and never stops: the guard's whole cost."""


def guarded(lm, head, prompts, new):
    cfg = audit.AuditConfig(**FULL_COST, max_new_tokens=new)
    return [audit.generate_with_audit(lm, head, p, cfg) for p in prompts]


def guarded_batch(lm, head, prompts, new):
    cfg = audit.AuditConfig(**FULL_COST, max_new_tokens=new)
    return audit.generate_batch_with_audit(lm, head, prompts, cfg, batch_size=len(prompts))


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--new", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, _ = common.load(args.model, args.device, args.dtype)
    torch.manual_seed(0)
    head = SafetyHead(lm.model.config.hidden_size, 1024, 512, LatentSpec()).to(lm.device).eval()
    prompts = common.prompts(args.n)
    plain(lm, prompts[:2], 4, 2), guarded(lm, head, prompts[:1], 4), guarded_batch(lm, head, prompts[:2], 4)  # warm-up
    _, t_plain = common.timed(lambda: plain(lm, prompts, args.new))
    _, t_plain_batch = common.timed(lambda: plain(lm, prompts, args.new, args.n))
    records, t_guard = common.timed(lambda: guarded(lm, head, prompts, args.new))
    batched, t_batch = common.timed(lambda: guarded_batch(lm, head, prompts, args.new))
    per_plain = t_plain / (args.n * args.new)

    def row(peer, seconds, tokens, same="—"):
        per = seconds / max(tokens, 1)
        return {"peer": peer, "ms_per_token": 1000 * per, "time_per_token_ratio": per / per_plain, "same_tokens": same}

    same = sum(b.tokens == r.tokens for b, r in zip(batched, records))
    rows = [row("plain greedy (HF generate, batch 1)", t_plain, args.n * args.new),
            row(f"plain greedy (HF generate, batch {args.n})", t_plain_batch, args.n * args.new),
            row("monitor + guard (ours, one at a time)", t_guard, sum(len(r.tokens) for r in records)),
            row(f"monitor + guard (ours, batch {args.n})", t_batch, sum(len(r.tokens) for r in batched),
                f"{same}/{args.n} as one at a time")]
    common.print_rows(f"guard overhead, {args.model}, {args.new} tokens ({common.device_name()})", rows)
    print(f"saved {common.save('guard', rows, {'model': args.model, 'new_tokens': args.new, 'command': ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
