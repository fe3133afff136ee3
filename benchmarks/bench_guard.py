"""Guard-mode overhead: greedy decoding with the per-token latent monitor + guard vs plain greedy
decoding of the same model, one sequence at a time (how the guard runs), same prompts and lengths.

    python benchmarks/bench_guard.py --model smollm2
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


def plain(lm, prompts, new):
    params = generation.SamplingParams(new, 1, ignore_eos=True, engine="hf")
    return generation.generate(lm, prompts, params)


def guarded(lm, head, prompts, new):
    # scores every token, never stops: full cost
    cfg = audit.AuditConfig(threshold=-1.0, patience=10**9, guard=True, max_new_tokens=new)
    return [audit.generate_with_audit(lm, head, p, cfg) for p in prompts]


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
    plain(lm, prompts[:1], 4), guarded(lm, head, prompts[:1], 4)  # warm-up
    _, t_plain = common.timed(lambda: plain(lm, prompts, args.new))
    records, t_guard = common.timed(lambda: guarded(lm, head, prompts, args.new))
    tokens_guard = sum(len(r.tokens) for r in records)
    rows = [{"peer": "plain greedy (HF generate, batch 1)", "ms_per_token": 1000 * t_plain / (args.n * args.new), "time_per_token_ratio": 1.0},
            {"peer": "monitor + guard (ours)", "ms_per_token": 1000 * t_guard / max(tokens_guard, 1),
             "time_per_token_ratio": (t_guard / max(tokens_guard, 1)) / (t_plain / (args.n * args.new))}]
    common.print_rows(f"guard overhead, {args.model}, {args.new} tokens ({common.device_name()})", rows)
    print(f"saved {common.save('guard', rows, {'model': args.model, 'new_tokens': args.new, 'command': ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
