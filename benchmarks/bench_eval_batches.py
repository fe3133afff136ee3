"""Evaluation's decode: batches cut by a token limit vs a fixed batch size, on evaluation's own inputs.

    python benchmarks/bench_eval_batches.py --model smollm2                     # CPU, after `dvc repro ingest`
    python benchmarks/bench_eval_batches.py --model smollm2 --limits 12288,16384 --cap 256

The inputs are what the `evaluate` stage decodes for one model (params.yaml:evaluate): the plain
harmful and benign test prompts, then the first ``attack_prompts`` harmful ones under every attack
(long jailbreak templates next to one-line questions). Without ``data/ingest/prompts.parquet``
the prompts come from the installed sources. Every peer decodes greedily with EOS on, as
evaluation does, so a batch runs until its longest reply ends; the peer is ``--peer-rows`` rows a
batch (64: evaluation's batches before ``evaluate.batch_tokens``). Rows report seconds, the
speed-up against that peer and how many of the replies equal the peer's (batch composition can
flip a near-tied greedy token).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components import evaluate  # noqa: E402
from components.core.config import load_params, stage_config  # noqa: E402
from components.lm import generation  # noqa: E402


def eval_inputs(cfg: evaluate.EvaluateConfig, n_plain: int) -> list[str]:
    path = Path("data/ingest/prompts.parquet")
    if path.is_file():
        prompts = pd.read_parquet(path)
    else:  # installed sources, half marked benign: the lengths are what matters here
        texts = common.prompts(n_plain)
        prompts = pd.DataFrame({"prompt_id": [f"{i:05d}" for i in range(len(texts))], "prompt": texts,
                                "prompt_kind": ["harmful", "benign"] * (len(texts) // 2) + ["harmful"] * (len(texts) % 2),
                                "split": "test"})
    return list(evaluate.build_inputs(evaluate.test_prompts(prompts, cfg), cfg).input)


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--limits", default="12288,16384", help="batch_tokens values to time, comma-separated")
    ap.add_argument("--peer-rows", type=int, default=64, help="rows a batch of the fixed-size peer")
    ap.add_argument("--cap", type=int, default=256, help="most rows a batch under a token limit")
    ap.add_argument("--n-plain", type=int, default=280, help="prompts when there is no ingest output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = stage_config(evaluate.EvaluateConfig, "evaluate", load_params("params.yaml"))
    lm, _ = common.load(args.model, args.device, args.dtype)
    inputs = eval_inputs(cfg, args.n_plain)
    peer = generation.SamplingParams(cfg.max_new_tokens, args.peer_rows)
    generation.generate(lm, inputs[:8], peer)  # warm-up
    base_out, base_s = common.timed(lambda: generation.generate(lm, inputs, peer))
    rows = [{"peer": f"fixed batches of {args.peer_rows} rows", "seconds": base_s, "speedup": 1.0,
             "same_replies": len(inputs)}]
    for limit in (int(x) for x in args.limits.split(",") if x):
        params = generation.SamplingParams(cfg.max_new_tokens, args.cap, batch_tokens=limit)
        out, s = common.timed(lambda: generation.generate(lm, inputs, params))
        rows.append({"peer": f"token limit {limit}, at most {args.cap} rows", "seconds": s, "speedup": base_s / s,
                     "same_replies": sum(a == b for a, b in zip(out, base_out))})
    meta = {"model": args.model, "inputs": len(inputs), "new_tokens": cfg.max_new_tokens,
            "dtype": str(lm.model.dtype).removeprefix("torch."), "command": " ".join(sys.argv)}
    common.print_rows(f"evaluation decode, {args.model}, {len(inputs)} inputs, {cfg.max_new_tokens} new tokens "
                      f"({common.device_name()})", rows)
    print(f"saved {common.save('eval_batches', rows, meta)}")


if __name__ == "__main__":
    main()
