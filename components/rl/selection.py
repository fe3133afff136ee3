"""Validation-based checkpoint selection for RL: which adapter of a run becomes the stage's output.

At step −1 (the untrained adapter: LoRA B = 0, the policy equals the reference), every
``log_every`` steps (points before ``select_from`` skipped: ``due``) and at the end, the main
process greedily answers (up to ``select_max_new_tokens`` tokens) the first ``select_harmful``
harmful and ``select_benign`` benign ``val`` prompts (sorted) and grades them with the selection
judge (the held-out judge by default: the policy never trained against it):

    val_refusal      = share of harmful prompts whose reply the judge labels refusal
    val_over_refusal = share of benign prompts whose reply the judge labels refusal
    score            = val_refusal − λ·val_over_refusal          λ = ``select_lambda``

The best-scoring adapter so far (ties: the earlier step) is kept in ``<checkpoint dir>/best``, so a
resumed run keeps it, and is loaded into the policy before the adapter is saved. Step −1 winning
is a legitimate answer: RL did not help on validation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from components.eval.judges import REFUSAL, Judge, judge_completions
from components.lm import generation
from components.rl import checkpoint


@dataclass(frozen=True)
class Point:
    """One selection evaluation."""

    step: int
    val_refusal: float
    val_over_refusal: float
    score: float

    def beats(self, other: "Point | None") -> bool:
        """Strictly higher score, or the same score at an earlier step (ties → earlier)."""
        return other is None or self.score > other.score or (self.score == other.score and self.step < other.step)

    def metrics(self) -> dict[str, float]:
        return {"rl/val_refusal": self.val_refusal, "rl/val_over_refusal": self.val_over_refusal,
                "rl/val_score": self.score}


def due(step: int, log_every: int, select_from: int = 0) -> bool:
    """Whether 0-based ``step`` is a selection point: every ``log_every``-th step (steps 4, 9, … for
    5), those before ``select_from`` skipped. Step −1 and the last step are evaluated whatever this says."""
    return step >= select_from and (step + 1) % log_every == 0


def share(labels: list[str], label: str) -> float:
    """Share of ``labels`` equal to ``label``; 0 for none."""
    return sum(x == label for x in labels) / len(labels) if labels else 0.0


def evaluate(policy, tokenizer, judge: Judge, harmful: list[str], benign: list[str], max_new_tokens: int,
             device, engine: str, step: int, lam: float) -> tuple[Point, list[str]]:
    """Greedy replies to ``harmful`` + ``benign`` (one batch), graded by ``judge``: the Point at
    ``step`` and the replies to the harmful prompts (for the obfuscation probe)."""
    from components.lm.runtime import LoadedModel

    prompts = harmful + benign
    lm = LoadedModel(policy, tokenizer, device, "policy", engine)
    texts = generation.generate(lm, prompts, generation.SamplingParams(max_new_tokens, max(len(prompts), 1)),
                                desc="select")
    labels = [v.label for v in judge_completions(judge, prompts, texts)]
    refusal, over = share(labels[: len(harmful)], REFUSAL), share(labels[len(harmful):], REFUSAL)
    return Point(step, refusal, over, refusal - lam * over), texts[: len(harmful)]


def keep_if_best(folder: Path, policy, point: Point, best: Point | None) -> Point:
    """Save ``policy``'s adapter as the best when ``point`` beats ``best``; returns the best now."""
    if not point.beats(best):
        return best
    checkpoint.save_best(folder, policy, asdict(point))
    return point


def saved_best(folder: Path) -> Point | None:
    """The best kept in ``folder`` by an earlier (interrupted) run, or None."""
    info = checkpoint.best_info(folder)
    return Point(**info) if info is not None else None
