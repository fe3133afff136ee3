"""The refusal-opening term's forward and backward (``components.rl.openings``, round 18): ours (each
prompt encoded once, its K openings on its KV cache: ``openings.opening_logprobs``) vs the peer
(``forward_logprobs`` on the n·K full prompt + opening rows), on one step's rows as
``opening_sides: both`` builds them (8 benign + 8 harmful prompts × the six default openings), with
a fresh LoRA adapter (r = 8 on q, k, v, o) whose weights get the gradient. Also prints the largest
difference between the two paths' log-probs.

    python benchmarks/bench_openings.py --model smollm2
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.rl import openings  # noqa: E402
from components.rl.config import TrainRLConfig  # noqa: E402
from components.rl.policy import LoraSpec, forward_logprobs, wrap_lora  # noqa: E402


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--prompts", type=int, default=16, help="prompts a step (benign + harmful)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, _ = common.load(args.model, args.device, args.dtype)
    policy = wrap_lora(lm.model, LoraSpec(8, 16), seed=0)
    ids = openings.opening_ids(lm.tokenizer, TrainRLConfig().openings)
    batch = openings.build(lm.tokenizer, common.prompts(args.prompts), ids, args.prompts, lm.device)
    mask = batch.rows.completion_mask.bool()

    def step(logprobs):
        def run():
            policy.zero_grad()
            logp = logprobs()
            openings.unlikelihood(openings.log_p_refuse(logp, batch.rows.completion_mask, len(ids))).mean().backward()
            return logp.detach()
        run()  # warm-up
        out, seconds = common.timed(lambda: [run() for _ in range(args.repeats)])
        return out[-1], seconds / args.repeats

    peer, t_peer = step(lambda: forward_logprobs(policy, batch.rows)[0])
    ours, t_ours = step(lambda: openings.opening_logprobs(policy, batch))
    diff = float((peer[mask].float() - ours[mask].float()).abs().max())
    shape = {"prompts": args.prompts, "openings": len(ids), "rows": int(mask.shape[0]),
             "prompt_width": batch.rows.prompt_len, "opening_width": int(mask.shape[1])}
    rows = [{**shape, "path": "full rows (forward_logprobs)", "s_per_step": t_peer, "time_ratio": 1.0,
             "max_abs_logp_diff": 0.0},
            {**shape, "path": "ours (prompt once + KV cache)", "s_per_step": t_ours, "time_ratio": t_ours / t_peer,
             "max_abs_logp_diff": diff}]
    common.print_rows(f"opening term, forward + backward per step, {args.model} ({common.device_name()})", rows)
    print(f"saved {common.save('openings', rows, {'model': args.model, 'command': ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
