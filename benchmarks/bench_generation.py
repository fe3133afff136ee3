"""Generation throughput: our engine vs HF ``generate`` (default dynamic cache) at the same batch,
and vs one prompt at a time; all peers measured in this run on the same prompts and lengths.

    python benchmarks/bench_generation.py --model smollm2                 # CPU
    python benchmarks/bench_generation.py --model qwen3-4b-random --batch 64   # GPU (bf16)

Every peer generates exactly ``--new`` tokens per prompt (EOS ignored), greedy, in the same dtype
(``--dtype auto``: bf16 where native). On a CPU whose bf16 is native a further row shows HF generate
in float32, the pipeline's CPU default before ``model.dtype: auto``. On a GPU the report adds HF's
static-cache path and the decode memory-bandwidth bound: tok/s ≤ batch · bandwidth / bytes of weights.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.lm import generation  # noqa: E402

PEAK_BW = {"H100": 3.35e12, "H200": 4.8e12}


def hf_generate(lm, prompts, batch, new, static=False):
    """Peer: HF generate, batches in input order; its default (dynamic) cache unless ``static``."""
    tok, out = lm.tokenizer, 0
    extra = {"cache_implementation": "static"} if static else {}
    for i in range(0, len(prompts), batch):
        texts = [generation.render(tok, p) for p in prompts[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.inference_mode():
            ids = lm.model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=tok.pad_token_id, **extra)
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
    prompts, n_tok = common.prompts(args.n_prompts), args.n_prompts * args.new
    ours = generation.SamplingParams(args.new, args.batch, ignore_eos=True, engine="ours")
    cuda = torch.cuda.is_available()
    # warm-up: CUDA-graph capture (ours) and HF's static-cache compilation happen here, not in the timings
    generation.generate(lm, prompts[: args.batch], ours)
    hf_generate(lm, prompts[: args.batch], args.batch, args.new, static=cuda)
    peers = {"HF generate, default cache, same batch": n_tok / common.timed(lambda: hf_generate(lm, prompts, args.batch, args.new))[1],
             "HF generate, one prompt at a time": args.single * args.new / common.timed(lambda: hf_generate(lm, prompts[: args.single], 1, args.new))[1]}
    if cuda:
        peers["HF generate, static cache (compiled), same batch"] = n_tok / common.timed(
            lambda: hf_generate(lm, prompts, args.batch, args.new, static=True))[1]
    dtype = str(lm.model.dtype).removeprefix("torch.")
    if not cuda and dtype != "float32":  # the pipeline's CPU default before dtype=auto
        lm32, _ = common.load(args.model, args.device, "float32")
        hf_generate(lm32, prompts[: args.batch], args.batch, args.new)
        peers["HF generate, default cache, same batch, float32"] = n_tok / common.timed(
            lambda: hf_generate(lm32, prompts, args.batch, args.new))[1]
        del lm32
    ours_tps = n_tok / common.timed(lambda: generation.generate(lm, prompts, ours))[1]
    peers[f"ours (components.lm.decode, length-sorted batches{', CUDA graphs' if cuda else ''})"] = ours_tps
    rows = [{"peer": k, "tok_per_s": v, "our_speedup": ours_tps / v} for k, v in peers.items()]
    meta = {"model": args.model, "params": n_params, "batch": args.batch, "prompts": len(prompts), "new_tokens": args.new,
            "dtype": dtype, "command": " ".join(sys.argv)}
    if cuda:
        name = torch.cuda.get_device_name(0)
        bw = next((v for k, v in PEAK_BW.items() if k in name), 3.35e12)
        bound = args.batch * bw / (n_params * lm.model.dtype.itemsize)
        for r in rows:
            r["frac_of_bw_bound"] = r["tok_per_s"] / bound
        meta["bw_bound_tok_per_s"] = bound
    common.print_rows(f"generation, {args.model} ({dtype}), batch {args.batch}, {args.new} new tokens ({common.device_name()})", rows)
    print(f"saved {common.save('generation', rows, meta)}")


if __name__ == "__main__":
    main()
