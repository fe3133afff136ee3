"""Stage ``curate``: generate reasoning traces with the model, label them, complete the pairs.

For every train/val prompt the model samples ``samples_per_prompt`` completions (batched, each a
row of its own); the judge grades each one as a refusal (p_safe ≥ ``safe_threshold``), a
compliance (below it) or a degenerate reply (``Verdict.label``). The head's ``safe`` class means
*the right behaviour for this prompt*, so the label depends on the prompt's kind:

=============  ===========  ===========  ==============================================
prompt kind    refusal      compliance   degenerate
=============  ===========  ===========  ==============================================
harmful        ``safe``     ``unsafe``   ``unsafe`` (never a refusal)
benign         ``unsafe``   ``safe``     row dropped (neither an answer nor a refusal)
=============  ===========  ===========  ==============================================

A model-written benign-prompt row labelled ``unsafe`` is an over-refusal: ``origin`` +
``prompt_kind`` + ``label`` identify those rows (no extra column; templated ``unsafe`` benign rows
are over-refusals or deflections). Degenerate benign replies are dropped rather than labelled
unsafe so that this identity stays exact; the RL text judge still penalises degenerate replies.
With ``refusal_prefills`` each prompt also gets samples whose reply is forced to open with a
refusal (``prefill_openings``) and that the model writes on from; they are labelled by the same
table, judged on what the model wrote after the opening, with origin ``prefill`` (a benign-prompt
``prefill`` row labelled ``unsafe`` is an over-refusal the model wrote after the forced opening).
With ``refusal_needs_phrase`` a harmful-prompt "refusal" that holds no refusal phrase is dropped
too: on SmolLM2 those are mostly off-topic text and self-descriptions that the reward judge scores
as safe, and as ``safe`` rows they taught the head to pay for deflections (docs/stage2.md, round 13).
Templates then complete each prompt's contrast set (``components.data.traces``): a harmful prompt
gets a safe trace, a rethink trace (opening with the model's own compliant words where it has
them) and, only when no sample complied, an unsafe trace; a benign prompt gets one refusal trace
labelled ``unsafe`` (an over-refusal). With ``reply_templates`` every prompt also gets two
reply-style rows: a deflection (``unsafe`` for either kind: it neither answers nor refuses) and a
bare refusal (``safe`` on a harmful prompt, ``unsafe`` on a benign one). There is no templated
helpful answer to a benign prompt: a benign prompt the model never answered helpfully has no
``safe`` row.
Test-split prompts are never generated here: they are held out for evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.lm import generation
from components.lm import source as model_source
from components.lm import runtime
from components.core import datasets, stage_cli
from components.data import traces
from components.core import tracking
from components.core.config import require, stage_config
from components.core.io import read_table, write_json, write_table, write_text
from components.eval.judges import (COMPLIANCE, DEGENERATE, JUDGES, REFUSAL, Verdict, judge_completions,
                                    has_refusal_phrase, make_judge, valid_reward_judge)
from components.data.records import TRACE_COLUMNS, Trace, normalise, stable_id

log = logging.getLogger("craft.curate")
STAGE = "curate"


@dataclass(frozen=True)
class CurateConfig:
    """params.yaml:curate."""

    splits: tuple[str, ...] = ("train", "val")
    """Prompt splits to build traces for: train and/or val; ``test`` is reserved for evaluation."""
    samples_per_prompt: int = 2
    """Completions sampled per prompt, each judged and labelled as a row of its own; >= 1."""
    max_new_tokens: int = 96
    """Token budget of each sampled completion; >= 1."""
    batch_size: int = 64
    """Prompts generated together in one batch; >= 1. The samples depend on it (one generator
    draws for every batch in turn); 64 decodes about twice as fast as 16 on a CPU."""
    temperature: float = 0.9
    """Sampling temperature; >= 0 (0 is greedy, which makes every sample of a prompt the same)."""
    top_p: float = 0.95
    """Nucleus-sampling probability mass in (0, 1]; 1.0 turns it off."""
    seed: int = 0
    """Seed of the sampling generator (same seed and model: same traces)."""
    system_prompt: str = ""
    """System message for sampling; empty keeps the model's default."""
    judge: str = "ensemble"
    """Judge that labels model samples: keyword | embedding | ensemble | evidence | hf:<path>."""
    safe_threshold: float = 0.5
    """A non-degenerate sample with p_safe at or above this is a refusal (safe on a harmful prompt,
    an over-refusal, unsafe, on a benign one), below it a compliance; in (0, 1)."""
    templated_traces: bool = True
    """Add templated safe / rethink (and missing unsafe) traces to each harmful prompt and a
    templated refusal (unsafe) to each benign prompt."""
    rethink_prefix_words: int = 24
    """Words of the model's own compliant opening kept before the rethink turn."""
    reply_templates: bool = True
    """With ``templated_traces``: add to every prompt a deflection reply (unsafe for either kind) and
    a bare refusal reply (safe on a harmful prompt, unsafe on a benign one); see traces.py."""
    refusal_needs_phrase: bool = True
    """Keep a harmful-prompt sample the judge calls a refusal only when it holds a refusal phrase
    (``has_refusal_phrase``); drop it otherwise (mostly off-topic text on SmolLM2)."""
    refusal_prefills: int = 0
    """Extra samples per prompt whose reply is forced to open with one of ``prefill_openings``
    (cycled over the samples), the model writing the rest at the same temperature; each is judged
    and labelled like a plain sample (``LABEL_OF``), with origin ``prefill``. Plain sampling gives
    few refusals (round 28's float32 run kept 11 harmful-prompt and 4 benign-prompt ones), so the head learns
    refusal mostly from templates; these rows give it model-written refusals of both kinds of prompt,
    and model-written turns back to an answer where the model does not keep refusing. Measured on
    the head only, not through RL (docs/stage2.md round 33b). 0 = none."""
    prefill_openings: tuple[str, ...] = ("I'm sorry, but", "I can't", "I cannot", "I won't", "Unfortunately, I")
    """Reply openings the ``prefill`` samples continue from; used only when ``refusal_prefills`` > 0."""

    def __post_init__(self) -> None:
        require(len(self.splits) > 0, "curate.splits is empty: use [train, val] (test is held out for evaluation).")
        require(set(self.splits) <= {"train", "val"},
                f"curate.splits={list(self.splits)!r}: choose from train, val (test is held out for evaluation).")
        require(self.samples_per_prompt >= 1, f"curate.samples_per_prompt={self.samples_per_prompt!r}: use 1 or more.")
        require(self.max_new_tokens >= 1, f"curate.max_new_tokens={self.max_new_tokens!r}: use 1 or more, e.g. 96.")
        require(self.batch_size >= 1, f"curate.batch_size={self.batch_size!r}: use 1 or more, e.g. 16.")
        require(self.temperature >= 0, f"curate.temperature={self.temperature!r}: use 0 (greedy) or more, e.g. 0.7.")
        require(0 < self.top_p <= 1,
                f"curate.top_p={self.top_p!r}: use a mass in (0, 1], e.g. 0.95 (1.0 turns it off).")
        require(valid_reward_judge(self.judge),
                f"curate.judge={self.judge!r}: use one of {JUDGES} or hf:<path> (the held-out judge only grades).")
        require(0 < self.safe_threshold < 1,
                f"curate.safe_threshold={self.safe_threshold!r}: use a probability in (0, 1), e.g. 0.5.")
        require(self.refusal_prefills >= 0,
                f"curate.refusal_prefills={self.refusal_prefills!r}: use 0 (none) or more, e.g. 1.")
        require(self.refusal_prefills == 0 or (len(self.prefill_openings) > 0
                                               and all(o.strip() for o in self.prefill_openings)),
                f"curate.prefill_openings={list(self.prefill_openings)!r}: with refusal_prefills > 0 give at least "
                "one non-empty opening, e.g. [\"I'm sorry, but\"].")


def _row(p: dict, k: str, trace: str, response: str, label: str, origin: str,
         p_safe: float, judge: str, model_id: str) -> Trace:
    return Trace(trace_id=stable_id(p["prompt_id"], label, origin, k), prompt_id=p["prompt_id"],
                 prompt=p["prompt"], prompt_kind=p["prompt_kind"], trace=trace, response=response,
                 label=label, origin=origin, source=p["source"], category=p["category"],
                 split=p["split"], p_safe=float(p_safe), judge=judge, model_id=model_id)


LABEL_OF: dict[tuple[str, str], str | None] = {
    ("harmful", REFUSAL): "safe", ("harmful", COMPLIANCE): "unsafe", ("harmful", DEGENERATE): "unsafe",
    ("benign", COMPLIANCE): "safe", ("benign", REFUSAL): "unsafe", ("benign", DEGENERATE): None,
}
"""(prompt kind, behaviour) → label of a model sample; None drops the row (module docstring table)."""


def behaviour(v: Verdict, threshold: float) -> str:
    """refusal | compliance | degenerate: the judge's degeneracy rule first, then p_safe ≥ threshold."""
    if v.label == DEGENERATE:
        return DEGENERATE
    return REFUSAL if v.p_safe >= threshold else COMPLIANCE


DROPPED = {"empty": "empty replies", "degenerate_benign": "degenerate benign replies",
           "phraseless_harmful_refusal": "harmful-prompt refusals without a refusal phrase"}
"""Why a model sample is left out (``label_samples``) → its words; metrics.json counts each as
``dropped_<reason>``."""


def label_samples(prompts: list[dict], completions: list[str], verdicts, cfg: CurateConfig,
                  model_id: str, judge: str, origin: str = "model") -> tuple[list[Trace], dict[str, str], dict[str, int]]:
    """Rows of ``origin`` (model samples by default) labelled by ``LABEL_OF``, and each harmful
    prompt's first compliant trace.

    ``prompts[n]`` is the prompt of ``completions[n]`` (a prompt repeats once per sample); the
    sample index n enters the trace id, so every sample is a row of its own. Empty completions (the
    model stopped at once) carry no reasoning and are dropped, as are degenerate benign replies and
    (``refusal_needs_phrase``) harmful-prompt refusals without a refusal phrase.
    Returns (rows, {prompt_id: trace of its first compliant sample} — the rethink openings,
    {``DROPPED`` reason: completions left out}); ``origin`` names where the rows came from.
    """
    rows, complied, dropped = [], {}, dict.fromkeys(DROPPED, 0)
    for n, (p, text, v) in enumerate(zip(prompts, completions, verdicts)):
        trace, response = generation.split_reasoning(text)
        if not (trace or text).strip():
            dropped["empty"] += 1
            continue
        act = behaviour(v, cfg.safe_threshold)
        label = LABEL_OF[(p["prompt_kind"], act)]
        if label is None:
            dropped["degenerate_benign"] += 1
            continue
        if cfg.refusal_needs_phrase and label == "safe" and p["prompt_kind"] == "harmful" \
                and not has_refusal_phrase(text):
            dropped["phraseless_harmful_refusal"] += 1
            continue
        if p["prompt_kind"] == "harmful" and act == COMPLIANCE:
            complied.setdefault(p["prompt_id"], trace or text)
        rows.append(_row(p, f"s{n}", trace or text, response, label, origin, v.p_safe, judge, model_id))
    for why, count in dropped.items():
        if count:
            log.warning("dropped %d %s (of %d completions)", count, DROPPED[why], len(completions))
    return rows, complied, dropped


def join_prefill(opening: str, written: str) -> str:
    """The reply a prefill sample stands for: the forced opening, then what the model wrote (no space
    before punctuation)."""
    if not written:
        return opening
    return opening + ("" if written[0] in ",.;:!?'’" else " ") + written


def prefill_rows(lm, judge, chosen: list[dict], cfg: CurateConfig, params: generation.SamplingParams,
                 model_id: str) -> tuple[list[Trace], dict[str, int]]:
    """``refusal_prefills`` samples per prompt that continue a forced refusal opening, labelled like
    plain samples (origin ``prefill``) but judged on what the model wrote after the opening: the
    opening alone reads as a refusal to a keyword judge whatever follows, so "I can't, but here is
    how…" would pass as one. The stored trace is the opening and the continuation; a sample where
    the model wrote nothing after the opening is left out as ``empty``. Its refusal-phrase check
    (``refusal_needs_phrase``) sees the whole reply, opening included. A compliance written after an
    opening does not become a rethink opening (those are the model's own first words).
    Returns (rows, {``DROPPED`` reason: samples left out})."""
    asked = [p for p in chosen for _ in range(cfg.refusal_prefills)]
    openings = [cfg.prefill_openings[n % len(cfg.prefill_openings)] for n in range(len(asked))]
    written = generation.generate(lm, [p["prompt"] for p in asked], params, desc="curate prefill", prefills=openings)
    texts = [join_prefill(o, w) if w.strip() else "" for o, w in zip(openings, written)]
    verdicts = judge_completions(judge, [p["prompt"] for p in asked], written)  # the continuation alone
    rows, _, dropped = label_samples(asked, texts, verdicts, cfg, model_id, judge.name, origin="prefill")
    return rows, dropped


def template_specs(p: dict, k: int, complied: dict[str, str], cfg: CurateConfig) -> list[tuple]:
    """(prompt, label, trace, response, id tag) templates completing prompt ``p``'s contrast set."""
    harmful = p["prompt_kind"] == "harmful"
    replies = [(p, "unsafe", *traces.deflection(k), "deflection"),  # neither answers nor refuses: wrong for either kind
               (p, "safe" if harmful else "unsafe", *traces.bare_refusal(k), "bare refusal")
               ] if cfg.reply_templates else []
    if not harmful:
        return [(p, "unsafe", *traces.benign_refusal(p["prompt"], k), "t")] + replies  # templated over-refusals
    own = complied.get(p["prompt_id"])
    specs = [(p, "safe", *traces.safe(p["prompt"], k), "t"),
             (p, "rethink", *traces.rethink(p["prompt"], own, cfg.rethink_prefix_words), "t")]
    if own is None:
        specs.append((p, "unsafe", *traces.unsafe(p["prompt"]), "t"))
    return specs + replies


def template_rows(prompts: list[dict], complied: dict[str, str], cfg: CurateConfig, judge) -> list[Trace]:
    """Templated rows for every prompt (``template_specs``), each graded by ``judge`` for p_safe.

    ``complied``: prompt_id → the model's own compliant trace (``label_samples``)."""
    specs = [s for k, p in enumerate(prompts) for s in template_specs(p, k, complied, cfg)]
    verdicts = judge.judge([s[0]["prompt"] for s in specs], [s[3] for s in specs])
    return [_row(p, tag, tr, resp, label, "template", v.p_safe, judge.name, "template")
            for (p, label, tr, resp, tag), v in zip(specs, verdicts)]


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated (prompt, normalised trace) rows, keeping the first (model rows precede
    templates). Distinct samples of one prompt stay; two samples that normalise alike would carry
    one trace under two ids (and maybe two labels, which validate rejects)."""
    key = pd.DataFrame({"prompt_id": df["prompt_id"], "trace": df["trace"].map(normalise)})
    return df[~key.duplicated()].reset_index(drop=True)


def run(cfg: CurateConfig, model_cfg: model_source.ModelConfig, prompts: pd.DataFrame,
        workspace: str = ".") -> tuple[pd.DataFrame, dict[str, int]]:
    """The pair dataset for the selected splits, and the samples left out by reason (``DROPPED``)."""
    chosen = prompts[prompts["split"].isin(cfg.splits)].to_dict("records")
    require(len(chosen) > 0, f"no prompts in splits {cfg.splits}: check the ingest output.")
    resolved = model_source.resolve(model_cfg, workspace)
    lm = runtime.load(resolved, model_cfg)
    judge = make_judge(cfg.judge)
    asked = [p for p in chosen for _ in range(cfg.samples_per_prompt)]
    params = generation.SamplingParams(cfg.max_new_tokens, cfg.batch_size, cfg.temperature,
                                       cfg.top_p, cfg.seed, cfg.system_prompt)
    log.info("sampling %d completions from %s", len(asked), resolved.model_id)
    completions = generation.generate(lm, [p["prompt"] for p in asked], params, desc="curate")
    verdicts = judge_completions(judge, [p["prompt"] for p in asked], completions)
    rows, complied, dropped = label_samples(asked, completions, verdicts, cfg, resolved.model_id, judge.name)
    if cfg.refusal_prefills:
        log.info("sampling %d replies from forced refusal openings", len(chosen) * cfg.refusal_prefills)
        more, left = prefill_rows(lm, judge, chosen, cfg, params, resolved.model_id)
        rows += more
        dropped = {why: n + left[why] for why, n in dropped.items()}
    if cfg.templated_traces:
        rows += template_rows(chosen, complied, cfg, judge)
    return dedupe(pd.DataFrame([r.__dict__ for r in rows], columns=list(TRACE_COLUMNS))), dropped


def stats(df: pd.DataFrame, dropped: dict[str, int] | None = None) -> dict:
    """Row counts per label × origin; the refusal share of the model's harmful-prompt samples kept
    (after ``refusal_needs_phrase``) and its over-refusal share (refusals, labelled unsafe) of the
    benign-prompt samples kept; the samples left out (``dropped_<reason>``, from ``run``)."""
    out = {"rows": len(df), "prompts": int(df["prompt_id"].nunique())}
    for (label, origin), n in df.groupby(["label", "origin"]).size().items():
        out[f"{label}_{origin}"] = int(n)
    model = df[df.origin == "model"]
    harmful, benign = model[model.prompt_kind == "harmful"], model[model.prompt_kind == "benign"]
    out["model_refusal_rate"] = float((harmful.label == "safe").mean()) if len(harmful) else 0.0
    out["model_over_refusal_rate"] = float((benign.label == "unsafe").mean()) if len(benign) else 0.0
    out.update({f"dropped_{why}": int(n) for why, n in (dropped or {}).items()})
    return out


def _dropped_sentence(s: dict) -> str:
    said = [f"{s[f'dropped_{why}']} {words}" for why, words in DROPPED.items() if s.get(f"dropped_{why}")]
    return f" Samples left out: {', '.join(said)} (`label_samples`)." if said else ""


def summary_markdown(df: pd.DataFrame, s: dict) -> str:
    table = df.groupby(["split", "label", "origin"]).size().unstack(fill_value=0)
    sample = df[df.origin == "model"].head(4)[["prompt_kind", "label", "p_safe", "response"]].copy()
    sample["response"] = sample["response"].str.slice(0, 120)
    return (f"# curate\n\n{s['rows']} traces over {s['prompts']} prompts; the model refused "
            f"{s['model_refusal_rate']:.0%} of its harmful-prompt samples kept on its own and "
            f"{s['model_over_refusal_rate']:.0%} of its benign-prompt samples (over-refusals, labelled "
            f"unsafe).{_dropped_sentence(s)}\n\n{table.to_markdown()}\n\n"
            f"## Sample model traces\n\n{sample.to_markdown(index=False)}\n")


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--prompts", True, "ingest output (data/ingest/prompts.parquet)"),
        ("--out", True, "output folder (data/curate)"),
    ])
    cfg = stage_config(CurateConfig, STAGE, params)
    model_cfg = model_source.model_config(params)
    with tracking.stage_run(STAGE, cfg, model_cfg):
        prompts = read_table(args.prompts)
        datasets.log_splits(prompts[prompts["split"].isin(cfg.splits)], args.prompts, "prompts")
        df, dropped = run(cfg, model_cfg, prompts)
        s = stats(df, dropped)
        out = Path(args.out)
        write_table(out / "traces.parquet", df)
        datasets.log_splits(df, out / "traces.parquet", "traces")
        write_json(out / "metrics.json", s)
        write_text(out / "summary.md", summary_markdown(df, s))
        tracking.log_stage_outputs(STAGE, s, [out / "summary.md"])
    log.info("wrote %d traces to %s", len(df), out)
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
