"""Transcripts of one model under test: generate, split reasoning from answer, judge three ways.

Columns added to the input rows: ``completion``, ``trace`` (inside ``<think>``; the whole
completion for a model that does not reason), ``response`` (the answer), ``label_trace`` /
``label_response`` (refusal | compliance | degenerate), ``p_safe_trace`` / ``p_safe_response`` and
``reason_response`` (the judge's reason). Answers are judged through ``judge_completions``, the
rule the RL reward uses too (a ``<think>`` cut off by the token limit is judged whole, and the
degeneracy rules call it degenerate).
"""
from __future__ import annotations

import pandas as pd
import torch

from components.eval.judges import Judge, Verdict, judge_completions
from components.lm import generation
from components.lm.runtime import LoadedModel


def _judged(out: pd.DataFrame, judge: Judge, answers: list[str] | None = None) -> pd.DataFrame:
    prompts = list(out.prompt)
    traces: list[Verdict] = judge.judge(prompts, list(out.trace))
    responses = judge_completions(judge, prompts, list(out.completion), answers=answers)
    out["label_trace"] = [v.label for v in traces]
    out["p_safe_trace"] = [v.p_safe for v in traces]
    out["label_response"] = [v.label for v in responses]
    out["p_safe_response"] = [v.p_safe for v in responses]
    out["reason_response"] = [v.reason for v in responses]
    return out


def complete(lm: LoadedModel, inputs: pd.DataFrame, max_new_tokens: int, batch_size: int,
             batch_tokens: int = 0) -> list[str]:
    """Greedy, batched completions of every input row, in order (``generation.batches``)."""
    params = generation.SamplingParams(max_new_tokens, batch_size, batch_tokens=batch_tokens)
    return generation.generate(lm, list(inputs.input), params, desc=f"evaluate {lm.model_id}")


def generate(lm: LoadedModel, inputs: pd.DataFrame, judge: Judge, max_new_tokens: int,
             batch_size: int, batch_tokens: int = 0) -> pd.DataFrame:
    """Greedy, batched generation for every input row (``generation.batches``), then three-way verdicts."""
    return judged(inputs, complete(lm, inputs, max_new_tokens, batch_size, batch_tokens), judge)


def judged(inputs: pd.DataFrame, completions: list[str], judge: Judge) -> pd.DataFrame:
    """The input rows with their ``completions`` (one per row, in order), split and judged three ways."""
    out = inputs.copy()
    out["completion"] = completions
    split = [generation.split_reasoning(c) for c in out.completion]
    out["trace"] = [t for t, _ in split]
    out["response"] = [r for _, r in split]
    return _judged(out, judge)


def guarded(lm: LoadedModel, head, inputs: pd.DataFrame, judge: Judge, audit_cfg,
            batch_size: int = 64) -> tuple[pd.DataFrame, dict]:
    """Greedy generation under the latent guard (``batch_size`` rows at a time on a KV cache)."""
    from components.eval import audit

    records = audit.generate_batch_with_audit(lm, head, list(inputs.input), audit_cfg, batch_size=batch_size)
    out = inputs.copy()
    out["completion"] = [r.completion for r in records]
    out["trace"], out["response"] = [r.trace for r in records], [r.answer for r in records]
    # the answer the user saw: the guard's redirection when it fired, else the split answer
    out = _judged(out, judge, answers=list(out.response))
    tokens = sum(max(len(r.tokens), 1) for r in records)
    stopped = pd.Series([bool(r.guard) for r in records], index=out.index)
    benign = out.prompt_kind == "benign"
    extra = {"guard_stop_rate_harmful": float(stopped[~benign].mean()) if (~benign).any() else float("nan"),
             "guard_stop_rate_benign": float(stopped[benign].mean()) if benign.any() else float("nan"),
             "guard_ms_per_token": 1000 * sum(r.seconds for r in records) / tokens}
    return out, extra


def reference_rows(prompts: pd.DataFrame) -> pd.DataFrame:
    """The benign prompts with a reference answer: the rows ``reference_nlls`` scores, in order."""
    return prompts[(prompts.prompt_kind == "benign") & (prompts.reference.fillna("") != "")]


@torch.no_grad()
def reference_nlls(lm: LoadedModel, prompts: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(prompt_id, summed NLL, tokens) of each reference answer to a benign prompt (teacher forcing)."""
    refs = reference_rows(prompts)
    out = []
    for pid, p, ref in zip(refs.prompt_id, refs.prompt, refs.reference):
        prefix = generation.render(lm.tokenizer, p)
        ids_p = lm.tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = lm.tokenizer(prefix + ref, add_special_tokens=False, return_tensors="pt")["input_ids"].to(lm.device)
        logits = lm.model(input_ids=ids).logits[0, ids_p.shape[1] - 1 : -1]  # [T_ref, V] predicts the answer
        target = ids[0, ids_p.shape[1]:]
        out.append((pid, float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")),
                    int(target.numel())))
    return out


def mean_nll(rows: list[tuple[str, float, int]]) -> float:
    """Per-token NLL over ``reference_nlls`` rows; NaN for none."""
    if not rows:
        return float("nan")
    total, count = 0.0, 0
    for _, nll, n in rows:  # summed in order, as one pass over the references would
        total += nll
        count += n
    return total / max(count, 1)


def reference_nll(lm: LoadedModel, prompts: pd.DataFrame) -> float:
    """Mean per-token NLL of reference answers to benign prompts (teacher forcing)."""
    return mean_nll(reference_nlls(lm, prompts))


def routed(base: pd.DataFrame, model: pd.DataFrame, routes: pd.Series) -> pd.DataFrame:
    """Transcripts of ``model`` behind the prompt router: row i is ``model``'s where ``routes[i]``
    (the adapter answers) and ``base``'s elsewhere. Both frames hold the same inputs in the same
    order (one ``generate`` each); greedy answers do not depend on which other rows shared a batch
    beyond bf16 ties, so this is what decoding the two groups apart gives."""
    if len(base) != len(model) or list(base.input) != list(model.input):
        raise ValueError("routed: base and model transcripts must cover the same inputs in the same order")
    pick = routes.to_numpy(dtype=bool)
    out = base.copy()
    out.loc[pick] = model.loc[pick].to_numpy()
    return out
