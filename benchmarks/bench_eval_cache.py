"""Evaluation of one unchanged model: decoded (empty generation cache) vs read back (warm cache).

    python benchmarks/bench_eval_cache.py --model smollm2                    # CPU, after `dvc repro ingest`
    python benchmarks/bench_eval_cache.py --model smollm2 --n-plain 40 --attack-prompts 8

Both peers run ``components.evaluate.decoded`` on the same model and evaluation's own inputs
(params.yaml:evaluate; ``--n-plain`` and ``--attack-prompts`` cut them down for a quick run): the
first with a fresh cache folder, so it decodes and keeps the generations; the second with that
folder filled, so it hashes the weights, reads the entry and judges every row again. The speed-up
is what `evaluate` saves for each model that did not change since its last evaluation (base and
SFT after an RL-only change; every model after a judge or router change). ``same_rows`` counts the
transcript rows equal between the two (it must be all of them).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components import evaluate  # noqa: E402
from components.core.config import load_params, stage_config  # noqa: E402
from components.eval.judges import make_judge  # noqa: E402


def eval_prompts(n_plain: int) -> pd.DataFrame:
    """Evaluation's test prompts from the ingest output, else installed sources (half marked benign)."""
    path = Path("data/ingest/prompts.parquet")
    if path.is_file():
        return pd.read_parquet(path)
    texts = common.prompts(n_plain)
    return pd.DataFrame({"prompt_id": [f"{i:05d}" for i in range(len(texts))], "prompt": texts,
                         "prompt_kind": ["harmful", "benign"] * (len(texts) // 2) + ["harmful"] * (len(texts) % 2),
                         "split": "test", "reference": ""})


def measure(lm, cfg: evaluate.EvaluateConfig, prompts: pd.DataFrame, judge) -> list[dict]:
    """Rows for the cold and the warm peer (seconds, speed-up against cold, equal transcript rows)."""
    chosen = evaluate.test_prompts(prompts, cfg)
    inputs = evaluate.build_inputs(chosen, cfg)
    with tempfile.TemporaryDirectory() as folder:
        cold, cold_s = common.timed(lambda: evaluate.decoded(cfg, lm, inputs, chosen, judge, Path(folder)))
        warm, warm_s = common.timed(lambda: evaluate.decoded(cfg, lm, inputs, chosen, judge, Path(folder)))
    rows_equal = (cold[0].astype(str) == warm[0].astype(str)).all(axis=1)
    same_nlls = json.dumps(cold[1]) == json.dumps(warm[1])  # NaN-safe: NaN != NaN, but its text is equal
    same = int(rows_equal.sum()) if same_nlls else 0  # reference NLLs differ: nothing counts as same
    return [{"peer": "decoded (empty cache)", "seconds": cold_s, "speedup": 1.0, "same_rows": len(cold[0])},
            {"peer": "read back (warm cache)", "seconds": warm_s, "speedup": cold_s / warm_s, "same_rows": same}]


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--n-plain", type=int, default=None, help="plain harmful and benign prompts each (default: params)")
    ap.add_argument("--attack-prompts", type=int, default=None, help="harmful prompts each attack wraps (default: params)")
    ap.add_argument("--judge", default="keyword", help="the judge of both peers (keyword: no trained judge needed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = stage_config(evaluate.EvaluateConfig, "evaluate", load_params("params.yaml"))
    cut = {k: v for k, v in {"max_harmful": args.n_plain, "max_benign": args.n_plain,
                             "attack_prompts": args.attack_prompts}.items() if v is not None}
    cfg = dataclasses.replace(cfg, judge=args.judge, **cut)
    lm, _ = common.load(args.model, args.device, args.dtype)
    rows = measure(lm, cfg, eval_prompts(args.n_plain or 280), make_judge(args.judge))
    common.publish("eval_cache", f"evaluation of one unchanged model, {args.model} "
                   f"({common.device_name()})", rows, args, inputs=rows[0]["same_rows"])


if __name__ == "__main__":
    main()
