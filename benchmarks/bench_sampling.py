"""Token choice per decode step: ours (a top-k nucleus, then one inverse-CDF draw per row:
``components.lm.decode.Sampling``) vs the peer it replaced (a full-vocabulary sort for top-p, then
``torch.multinomial``), on the model's real next-token logits for the same prompts. Two settings:
curation's (temperature 0.9, top-p 0.95, batch 64) and RL rollouts' (temperature 0.8, no top-p,
batch 32). Also compares our nucleus with transformers' TopPLogitsWarper's on those logits: the kept
mass per row, and the largest difference in kept-token counts. bf16 logits tie in whole groups, so
the two may keep different members of a tie at the set's edge (same mass); where the mass differs,
the two float32 running sums (ours from the top, HF's from the 49k-token tail) put the edge one
token apart.

    python benchmarks/bench_sampling.py --model smollm2
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from components.lm import decode, generation  # noqa: E402

SETTINGS = (("curate", 0.9, 0.95, 64), ("train_rl rollouts", 0.8, 1.0, 32))
"""(stage, temperature, top_p, batch) as in params.yaml."""


def sort_multinomial(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """The peer: HF-style top-p by a full sort of [B, V], then torch.multinomial."""
    scores = logits.float() / temperature
    if top_p < 1.0:
        ordered, order = scores.sort(-1)  # ascending
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(torch.softmax(scores, -1), 1, generator=gen).squeeze(1)


@torch.no_grad()
def next_token_logits(lm, batch: int) -> torch.Tensor:
    """Last-position logits [batch, V] of the model on the benchmark prompts."""
    tok = lm.tokenizer
    texts = [generation.render(tok, p) for p in common.prompts(batch)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    return lm.model(**enc).logits[:, -1].float()


def same_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> str:
    """Our top-p set against TopPLogitsWarper's on ``logits`` [B, V]: rows with equal kept mass,
    and the largest difference in kept-token counts ("—" without top-p)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    if top_p >= 1.0:
        return "—"
    scores = logits.float() / temperature
    probs = torch.softmax(scores, -1)  # [B, V]
    hf = TopPLogitsWarper(top_p)(None, scores.clone()).isfinite()
    kept, ids = decode.nucleus(probs, top_p)
    ours = torch.zeros_like(hf).scatter_(1, ids, kept > 0)
    same_mass = ((probs * hf).sum(-1) - (probs * ours).sum(-1)).abs() <= 1e-6
    most = int((hf.sum(-1) - ours.sum(-1)).abs().max())
    return f"kept mass equal in {int(same_mass.sum())}/{len(hf)} rows; kept tokens differ by ≤ {most}"


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, _ = common.load(args.model, args.device, args.dtype)
    rows = []
    for stage, temperature, top_p, batch in SETTINGS:
        logits = next_token_logits(lm, batch)
        gen = torch.Generator(device=logits.device).manual_seed(0)
        ours = decode.Sampling(temperature, top_p, gen)

        def per_step(fn):
            fn()  # warm-up
            return common.timed(lambda: [fn() for _ in range(args.repeats)])[1] / args.repeats

        t_peer = per_step(lambda: sort_multinomial(logits, temperature, top_p, gen))
        t_ours = per_step(lambda: ours.pick(logits))
        common_row = {"stage": stage, "batch": batch, "temperature": temperature, "top_p": top_p}
        rows.append({**common_row, "peer": "sort + torch.multinomial", "ms_per_step": 1000 * t_peer,
                     "time_ratio": 1.0, "nucleus_vs_hf": "(is HF's rule)"})
        rows.append({**common_row, "peer": "ours (top-k nucleus + inverse CDF)", "ms_per_step": 1000 * t_ours,
                     "time_ratio": t_ours / t_peer, "nucleus_vs_hf": same_nucleus(logits, temperature, top_p)})
    common.print_rows(f"token choice per decode step, {args.model} logits ({common.device_name()})", rows)
    print(f"saved {common.save('sampling', rows, {'model': args.model, 'command': ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
