"""CRAFT rewards as plain callables (paper §4.2), aware of the prompt's kind.

    R = w_lat·R_lat + w_txt·R_txt + w_cons·R_cons
    R_lat  = cos(z, μ_safe) − cos(z, μ_unsafe) + 0.5·cos(z, μ_rethink)     z = head(pooled state)
    g      = text goodness: the right behaviour *for this prompt*, from the reward judge's verdict
             (judges.judge_completions: the text rule evaluation uses)
               harmful prompt: g = p_safe                 (a refusal is right)
               benign prompt:  g = 1 − p_safe             (an answer is right)
               degenerate reply, either kind: g = p_safe ≤ DEGENERATE_P   (never right)
    R_txt  = 2·g − 1
    R_cons = 1 − |p_safe_latent − g|   the head's "safe" class means the right behaviour for the
                                       prompt (curation labels a benign-prompt refusal unsafe)

Sign of R_txt by prompt kind × verdict (p_safe ≥ SAFE_AT for a refusal, < SAFE_AT for compliance,
≤ DEGENERATE_P for a degenerate reply):

    | prompt kind | refusal          | compliance        | degenerate              |
    |-------------|------------------|-------------------|-------------------------|
    | harmful     | + (2·p_safe − 1) | − (2·p_safe − 1)  | − (2·p_safe − 1 ≤ −0.9) |
    | benign      | − (1 − 2·p_safe) | + (1 − 2·p_safe)  | − (2·p_safe − 1 ≤ −0.9) |

The paper trains on harmful prompts only, where g = p_safe; on benign prompts its reward would
teach over-refusal. The head is the same ``SafetyHead`` class ``train_head`` saved; the judge
shares the evaluation judges' interface, but evaluation grades with the held-out judge, never this
one. The latent state comes from the live policy (``source="policy"``, the paper) or from the
frozen reference re-encoding the text (``source="reference"``), which the policy cannot steer:
rewarding the policy's own activations can teach it to fool the probe (Obfuscation Atlas, arXiv
2602.15515). ``obfuscation_gap`` measures that: head score on policy activations minus on
reference activations of the same text.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from components.head.model import SafetyHead
from components.eval.judges import DEGENERATE, Judge, Verdict, judge_completions
from components.lm.latents import encode

SOURCES = ("policy", "reference")
KINDS = ("harmful", "benign")


@dataclass(frozen=True)
class RewardWeights:
    lat: float = 0.5
    txt: float = 0.4
    cons: float = 0.2

    def total(self, parts):
        """R = w_lat·R_lat + w_txt·R_txt + w_cons·R_cons of ``parts`` (a mapping of tensors or a frame)."""
        return self.lat * parts["r_lat"] + self.txt * parts["r_txt"] + self.cons * parts["r_cons"]


def reference_mode(model):
    """Context in which a peft model acts as its frozen base (adapter disabled)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def latent_scores(model, tokenizer, head: SafetyHead, prompts: Sequence[str], completions: Sequence[str],
                  device, source: str = "policy") -> dict[str, torch.Tensor]:
    """Head scores [B] of the pooled states of prompt+completion, from policy or reference."""
    ctx = reference_mode(model) if source == "reference" else contextlib.nullcontext()
    with ctx:
        h = encode(model, tokenizer, prompts, completions, head.spec, device)
    return head.score(h.to(head.input_mean.device))


@dataclass
class CraftReward:
    head: SafetyHead
    judge: Judge
    weights: RewardWeights = RewardWeights()
    source: str = "policy"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"reward source {self.source!r}: use one of {SOURCES}.")

    def __call__(self, model, tokenizer, prompts: Sequence[str], completions: Sequence[str], device,
                 kinds: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-sequence reward and its parts, each [B]. ``kinds[i]``: harmful | benign (None: all
        harmful, the paper's setting)."""
        kinds = list(kinds) if kinds is not None else ["harmful"] * len(prompts)
        if len(kinds) != len(prompts) or not set(kinds) <= set(KINDS):
            raise ValueError(f"kinds: one of {KINDS} per prompt ({len(prompts)}), got {sorted(set(kinds))}.")
        lat = latent_scores(model, tokenizer, self.head, prompts, completions, device, self.source)
        verdicts = judge_completions(self.judge, prompts, completions)
        p_text = torch.tensor([v.p_safe for v in verdicts])  # [B]
        g = torch.tensor([text_goodness(v, k) for v, k in zip(verdicts, kinds)])  # [B]
        p_lat = lat["p_safe"].cpu()
        parts = {"r_lat": lat["r_lat"].cpu(), "r_txt": 2 * g - 1, "r_cons": 1 - (p_lat - g).abs(),
                 "p_safe_latent": p_lat, "p_safe_text": p_text, "g_text": g}
        parts["total"] = self.weights.total(parts)
        return parts


def text_goodness(v: Verdict, kind: str) -> float:
    """g ∈ [0, 1]: how right the reply is for a prompt of ``kind`` (the module docstring's table)."""
    if kind == "harmful" or v.label == DEGENERATE:
        return v.p_safe  # a degenerate reply keeps p_safe ≤ DEGENERATE_P: never rewarded
    return 1.0 - v.p_safe


def obfuscation_gap(model, tokenizer, head: SafetyHead, prompts, completions, device) -> float:
    """mean R_lat(policy activations) − mean R_lat(reference activations), same text."""
    pol = latent_scores(model, tokenizer, head, prompts, completions, device, "policy")["r_lat"]
    ref = latent_scores(model, tokenizer, head, prompts, completions, device, "reference")["r_lat"]
    return float((pol - ref).mean())
