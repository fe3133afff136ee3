"""Generation throughput: our engine vs HF ``generate`` (default dynamic cache) at the same batch,
and vs one prompt at a time; all peers measured in this run on the same prompts and lengths.

    python benchmarks/bench_generation.py --model smollm2                 # CPU
    python benchmarks/bench_generation.py --model qwen3-4b-random --batch 64 --dtype bfloat16   # GPU

Every peer generates exactly ``--new`` tokens per prompt (EOS ignored), greedy. On a GPU the
report adds the decode memory-bandwidth bound: tok/s ≤ batch · bandwidth / bytes of weights.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components import generation  # noqa: E402

PEAK_BW = {"H100": 3.35e12, "H200": 4.8e12}


def hf_default(lm, prompts, batch, new):
    """Peer: HF generate with its default cache, batches in input order."""
    tok, out = lm.tokenizer, 0
    for i in range(0, len(prompts), batch):
        texts = [generation.render(tok, p) for p in prompts[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.inference_mode():
            ids = lm.model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
        out += (ids.shape[1] - enc["input_ids"].shape[1]) * ids.shape[0]
    return out


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--single", type=int, default=4, help="prompts for the one-at-a-time peer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, n_params = common.load(args.model, args.device, args.dtype)
    prompts = common.prompts(args.n_prompts)
    ours = generation.SamplingParams(args.new, args.batch, ignore_eos=True, cache="auto")
    # warm-up (compilation of the static-cache decode step happens here, not in the timings)
    generation.generate(lm, prompts[: args.batch], ours)
    hf_default(lm, prompts[: args.batch], args.batch, args.new)
    _, t_hf = common.timed(lambda: hf_default(lm, prompts, args.batch, args.new))
    _, t_one = common.timed(lambda: hf_default(lm, prompts[: args.single], 1, args.new))
    _, t_ours = common.timed(lambda: generation.generate(lm, prompts, ours))
    ours_tps = len(prompts) * args.new / t_ours
    peers = {"HF generate, default cache, same batch": len(prompts) * args.new / t_hf,
             "HF generate, one prompt at a time": args.single * args.new / t_one,
             "ours (length-sorted batches; static cache on CUDA)": ours_tps}
    rows = [{"peer": k, "tok_per_s": v, "our_speedup": ours_tps / v} for k, v in peers.items()]
    meta = {"model": args.model, "params": n_params, "batch": args.batch, "prompts": len(prompts), "new_tokens": args.new,
            "dtype": args.dtype, "command": " ".join(sys.argv)}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bw = next((v for k, v in PEAK_BW.items() if k in name), 3.35e12)
        bound = args.batch * bw / (n_params * torch.finfo(getattr(torch, args.dtype)).bits / 8)
        for r in rows:
            r["frac_of_bw_bound"] = r["tok_per_s"] / bound
        meta["bw_bound_tok_per_s"] = bound
    common.print_rows(f"generation, {args.model}, batch {args.batch}, {args.new} new tokens ({common.device_name()})", rows)
    print(f"saved {common.save('generation', rows, meta)}")


if __name__ == "__main__":
    main()
