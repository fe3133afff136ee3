"""Which prompts an RL step reads, and which of the step's rows a process holds.

- ``step_prompts``: each kind walks an epoch-wise permutation of its sorted pool, a pure function
  of (seed, step, kind), the same on every process; ``step_batch`` stacks a step's harmful then
  benign draws, and ``opening_rows`` / ``gate_rows`` draw the refusal-opening terms' prompts under
  tags of their own, apart from the rollouts'.
- ``refusal_prone`` (``benign_candidates`` > 1): of n·K benign draws, the n with the largest
  probability that the policy opens its reply with a refusal, kept in draw order; every process
  scores its share and sees every score, so all pick the same.
- Scale-out (``accelerate launch``, N processes): ``shard_prompts`` splits a step's prompts into N
  contiguous shares (``Rows``), so a GRPO group never straddles processes.

``cfg`` is a ``components.rl.config.TrainRLConfig``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from components.core import dist
from components.rl import openings


def step_prompts(pool: list[str], n: int, seed: int, step: int, kind: str = "harmful") -> list[str]:
    """The ``n`` global prompts of ``kind`` at one step: a pure function of (seed, step), the same on
    every process. Every prompt of the pool is drawn once per epoch: global draw i = step·n + j
    (j < n) is position i mod |pool| of epoch i div |pool|, whose order is the sorted pool shuffled
    by ``random.Random(f"{seed}:{kind}:{epoch}")``."""
    order, perms = sorted(pool), {}
    out: list[str] = []
    for i in range(step * n, step * n + n):
        epoch, pos = divmod(i, len(order))
        if epoch not in perms:
            perms[epoch] = list(order)
            random.Random(f"{seed}:{kind}:{epoch}").shuffle(perms[epoch])
        out.append(perms[epoch][pos])
    return out


def step_batch(pools: dict[str, list[str]], cfg, step: int) -> tuple[list[str], list[str]]:
    """(prompts, kinds) of one step: ``prompts_per_step`` harmful then ``benign_per_step`` benign,
    each its own epoch-wise permutation (``step_prompts``); kinds[i] is prompts[i]'s kind."""
    harmful = step_prompts(pools["harmful"], cfg.prompts_per_step, cfg.seed, step, "harmful")
    benign = step_prompts(pools["benign"], cfg.benign_per_step, cfg.seed, step, "benign") \
        if cfg.benign_per_step else []
    return harmful + benign, ["harmful"] * len(harmful) + ["benign"] * len(benign)


@dataclass(frozen=True)
class Rows:
    """This process's rows of a step's global batch: rows [start, start + size) of ``total``."""

    start: int
    size: int
    total: int

    @property
    def sharded(self) -> bool:
        return self.size < self.total

    def local(self, idx: torch.Tensor) -> torch.Tensor:
        """The entries of global row indices ``idx`` held here, as local indices, in ``idx``'s order."""
        mine = (idx >= self.start) & (idx < self.start + self.size)
        return idx[mine] - self.start


def shard_prompts(prompts: list, group_size: int, rank: int, world: int) -> tuple[list, Rows]:
    """Process ``rank``'s contiguous share of the step's prompts (any per-prompt items, e.g.
    (prompt, kind) pairs) and the rows (prompt × group) it holds."""
    lo, hi = dist.shard_bounds(len(prompts), rank, world)
    return prompts[lo:hi], Rows(lo * group_size, (hi - lo) * group_size, len(prompts) * group_size)


@torch.no_grad()
def refusal_prone(cfg, policy, tokenizer, pools: dict[str, list[str]], step: int, accelerator
                  ) -> tuple[list[str], dict[str, float]]:
    """The step's ``benign_per_step`` benign prompts under ``benign_candidates`` > 1: of
    ``benign_per_step · benign_candidates`` drawn by the walk (``step_prompts``, kind "benign": with
    one candidate a prompt, the walk's own draws), the ones with the largest P(x), the policy's
    probability of opening its reply with one of ``openings`` (``components.rl.openings``, no
    gradient); ties and the order kept by draw. Each process scores its share of the candidates and
    every process sees every score, so all pick the same. Also returns the mean P over the
    candidates and over the picked ones, for the log."""
    n = cfg.benign_per_step
    candidates = step_prompts(pools["benign"], n * cfg.benign_candidates, cfg.seed, step, "benign")
    lo, hi = dist.shard_bounds(len(candidates), accelerator.process_index, accelerator.num_processes)
    p = torch.zeros(0, dtype=torch.float32)
    if hi > lo:
        ids = openings.opening_ids(tokenizer, cfg.openings)
        batch = openings.build(tokenizer, candidates[lo:hi], ids, len(candidates), accelerator.device)
        logp = openings.opening_logprobs(policy, batch)  # [n_local·K, To]
        p = openings.log_p_refuse(logp, batch.rows.completion_mask.to(logp.device), len(ids)).exp().float().cpu()
    p = dist.cat(p)  # [n·candidates], in draw order
    top = sorted(sorted(range(len(candidates)), key=lambda i: -float(p[i]))[:n])
    return [candidates[i] for i in top], {"rl/benign_candidates_p": float(p.mean()),
                                          "rl/benign_picked_p": float(p[top].mean())}


def opening_rows(cfg, tokenizer, pools: dict[str, list[str]], step: int, rank: int, accelerator
                 ) -> openings.Openings | None:
    """This process's share of the step's ``opening_prompts`` benign prompts (an epoch-wise walk of
    the benign pool, drawn apart from the rollouts' prompts), then as many harmful ones under
    ``opening_sides: both``, × ``openings``; None when the term is off or no prompt falls here."""
    if cfg.opening_coef == 0:
        return None
    return gate_rows(cfg, tokenizer, pools, step, rank, accelerator, cfg.opening_prompts,
                     cfg.opening_sides == "both", "opening")


def gate_rows(cfg, tokenizer, pools: dict[str, list[str]], step: int, rank: int, accelerator, n: int,
              both: bool, tag: str) -> openings.Openings | None:
    """This process's share of ``n`` benign prompts of step ``step`` (``step_prompts`` under ``tag``),
    then, when ``both``, ``n`` harmful ones (under ``tag``-harmful), × ``cfg.openings``; None when no
    prompt falls here."""
    xs = step_prompts(pools["benign"], n, cfg.seed, step, tag)
    if both:
        xs = xs + step_prompts(pools["harmful"], n, cfg.seed, step, f"{tag}-harmful")
    lo, hi = dist.shard_bounds(len(xs), rank, accelerator.num_processes)
    if hi == lo:
        return None
    ids = openings.opening_ids(tokenizer, cfg.openings)
    return openings.build(tokenizer, xs[lo:hi], ids, len(xs), accelerator.device,
                          [i >= n for i in range(lo, hi)])
