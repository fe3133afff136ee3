"""The model card of a registered version: markdown built from what is known at registration.

Sections: what the model is and how to call it, the base model (source, id, fingerprint), the
evaluation table (value, Wilson 95% interval and n for this model, its base model and, when
evaluated, this model under the latent guard), known limits, and training data and lineage (git
commit, params hash, dvc.lock hashes of data and model outputs, the evaluation's prompt-set digest,
the prompt sources' package versions).
Everything comes from the arguments; nothing is measured here. ``description`` fits the card into
the registry's description field (5000 characters).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from components.registry import rules
from components.registry.serving import OUTPUT_COLUMNS, ServeDefaults

DESCRIPTION_LIMIT = 5000
"""MLflow's column size for registered model and version descriptions."""
CARD_FILE = "model_card.md"
REPORTS = (".md", ".png", ".html", "metrics.json", "history.json")
"""dvc.lock outputs the card leaves out of its lineage table: reports, not data the model came from."""
LABELS = {"response_asr": "harmful ASR (response) ↓", "reasoning_asr": "harmful ASR (reasoning) ↓",
          "refusal_rate": "refusal rate on harmful ↑", "over_refusal": "over-refusal on benign ↓",
          "degenerate_rate": "degenerate ↓", "utility_nll": "utility NLL ↓"}


@dataclass(frozen=True)
class CardFacts:
    """What registration knows beyond the model's metrics; every part is optional."""

    evaluation: Mapping = field(default_factory=dict)
    """data/evaluate/eval_set.json: prompt counts, attacks, decoding protocol and judge."""
    guard_metrics: Mapping[str, float] = field(default_factory=dict)
    """The model's metrics under the latent guard (metrics.json ``<model>_guard/…``)."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Prompt source → ``package==version`` (data/sources/manifest.json)."""
    stages: frozenset[str] = frozenset()
    """DVC stages whose output hashes the card lists (``upstream_stages``); empty: every stage."""
    routed: bool = False
    """Registered behind the prompt router: the base model answers what the router keeps from the adapter."""


def upstream_stages(lock: Mapping, stage: str) -> frozenset[str]:
    """``stage`` and every stage whose outputs it reads, transitively (dvc.lock deps and outs)."""
    stages = lock.get("stages") or {}
    outs = [(o["path"], name) for name, body in stages.items() for o in body.get("outs") or []]
    seen: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        seen.add(name)
        for dep in stages[name].get("deps") or []:
            todo += [producer for out, producer in outs if dep["path"] == out or dep["path"].startswith(out + "/")]
    return frozenset(seen)


def source_packages(manifest: Mapping) -> dict[str, str]:
    """Prompt source → ``package==version`` from data/sources/manifest.json (files per source)."""
    out = {}
    for source, files in sorted(manifest.items()):
        pins = sorted({f"{f['package']}=={f['version']}" for f in files if f.get("package")})
        out[source] = ", ".join(pins) if pins else "local files"
    return out


def _rows(metrics: Mapping[str, float]) -> list[str]:
    """Metric keys in table order: the rates, the attacks' response ASRs, the utility NLL."""
    present = [k for k in metrics if not k.endswith(rules.INTERVAL_PARTS)]
    attacks = sorted(k for k in present if rules.is_attack(k))
    return [k for k in rules.RATES if k in present] + attacks + [k for k in (rules.UTILITY,) if k in present]


def _cell(metrics: Mapping[str, float], key: str) -> str:
    if key not in metrics:
        return "—"
    value = float(metrics[key])
    if key == rules.UTILITY:
        return f"{value:.3f}"
    text = f"{value:.1%}"
    if f"{key}_lo" in metrics and f"{key}_hi" in metrics:
        text += f" [{float(metrics[key + '_lo']):.1%}, {float(metrics[key + '_hi']):.1%}]"
    if f"{key}_n" in metrics:
        text += f" (n={int(float(metrics[key + '_n']))})"
    return text


def evaluation_table(metrics: Mapping, base: Mapping, guard: Mapping) -> str:
    """Markdown table: one row per metric, columns this model, base (and guarded when given)."""
    columns = [("this model", metrics), ("base model", base)] + ([("this model + latent guard", guard)] if guard else [])
    lines = ["| metric | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key in _rows(metrics):
        label = LABELS.get(key) or f"{key[: -len(rules.ATTACK_ASR)]} attack: harmful ASR ↓"
        lines.append(f"| {label} | " + " | ".join(_cell(m, key) for _, m in columns) + " |")
    return "\n".join(lines)


def _lineage(lineage: Mapping[str, str], prompt_set: str, sources: Mapping[str, str], stages: frozenset[str]) -> str:
    lines = [f"- git commit: `{lineage.get('git_sha') or 'unknown'}`"]
    if lineage.get("params_hash"):
        lines.append(f"- params.yaml hash: `{lineage['params_hash']}`")
    lines.append(f"- evaluation prompt set: `{prompt_set}` (digest of data/evaluate/eval_set.json)")
    if sources:
        lines.append("- prompt sources: " + ", ".join(f"{k} (`{v}`)" for k, v in sorted(sources.items())))
    outs = sorted((k.split(".", 2)[1:], v) for k, v in lineage.items()
                  if k.startswith("dvc.") and k.count(".") >= 2 and not k.endswith(REPORTS)
                  and (not stages or k.split(".", 2)[1] in stages))
    if outs:
        lines += ["", "Data and model outputs this model comes from (dvc.lock; every hash of the run is in "
                  "the version's `lineage.dvc.*` tags):", "", "| stage | DVC output | md5 |", "|---|---|---|"]
        lines += [f"| {stage} | `{path}` | `{md5}` |" for (stage, path), md5 in outs]
    return "\n".join(lines)


def _limits(metrics: Mapping, facts: CardFacts, serve: ServeDefaults) -> list[str]:
    protocol = facts.evaluation.get("protocol") or {}
    judge = protocol.get("judge", "the pipeline's held-out judge")
    attacks = sorted(facts.evaluation.get("attacks") or {})
    out = [f"Graded by an automatic judge (`{judge}`), not by people; its agreement with human labels is "
           "in data/train_judge/report.md.",
           f"Measured with greedy decoding and {protocol.get('max_new_tokens', serve.max_new_tokens)} new tokens on "
           "single-turn prompts; sampling (`temperature` > 0), longer budgets, system prompts and multi-turn "
           "conversations are unmeasured.",
           "Intervals are Wilson 95% on the n shown: a difference inside overlapping intervals is not evidence "
           "of a change.",
           ("Jailbreak coverage is limited to " + ", ".join(attacks) + "; other attacks are untested.") if attacks
           else "No jailbreak attacks were evaluated.",
           "`latent_p_safe` is the CRAFT head's score of the model's own hidden states, trained on the pipeline's "
           "traces: a monitor signal, not a guarantee of safety."]
    if "response_asr" in metrics:
        out.append(f"It still complies with {float(metrics['response_asr']):.0%} of the held-out harmful "
                   "prompts: a research artefact, not a production safety filter.")
    if facts.guard_metrics:
        n = {k: int(float(facts.guard_metrics.get(f"{m}_n", 0))) for k, m in (("harmful", "response_asr"),
                                                                              ("benign", "over_refusal"))}
        out.append(f"The latent guard (`guard: true`) was evaluated on {n['harmful']} harmful and {n['benign']} "
                   "benign plain prompts only, no attacks.")
    return [f"- {line}" for line in out]


_ROUTED = ("\n\nServed behind the **prompt router** (`train_router`): a linear probe of the base model's state "
           "at the end of the prompt decides whether the adapter answers; a prompt it keeps from the adapter is "
           "answered by the base model (`adapter` is false in that row). The evaluation below measured this routed "
           "system.")


def build(name: str, model_dir: str | Path, metrics: Mapping[str, float], base_metrics: Mapping[str, float],
          lineage: Mapping[str, str], prompt_set: str, serve: ServeDefaults = ServeDefaults(),
          facts: CardFacts = CardFacts()) -> str:
    """The card's markdown for registering ``model_dir`` (a pipeline output folder) as ``name``."""
    card = json.loads((Path(model_dir) / "model.json").read_text())
    base_id = card.get("base_model_id") or card.get("base_model_source", "unknown")
    sizes = ", ".join(f"{k} {facts.evaluation[k]}" for k in ("harmful", "benign") if k in facts.evaluation)
    sections = [
        f"# {name}",
        "## What it is\n\n"
        f"A LoRA adapter on **{base_id}**, trained with CRAFT (reinforcement learning from hidden "
        f"representations: reward source `{card.get('reward_source', '?')}`, advantage `{card.get('advantage', '?')}`), "
        "shipped with the CRAFT safety head that scores the model's hidden states. An MLflow pyfunc: send a "
        "`prompt` column; it returns " + ", ".join(f"`{c}`" for c in OUTPUT_COLUMNS if c != "prompt") + ".\n\n"
        f"Request params: `max_new_tokens` (default {serve.max_new_tokens}), `temperature` (default "
        f"{serve.temperature:g}; 0 is greedy) and `guard` (default {str(serve.guard).lower()}: when true, generation "
        f"stops once latent p_safe stays below {serve.guard_threshold:g} for {serve.guard_patience} tokens and the "
        "response becomes a refusal)." + (_ROUTED if facts.routed else ""),
        "## Base model\n\n| field | value |\n|---|---|\n"
        f"| source | `{card.get('base_model_source', '?')}` |\n| id | {base_id} |\n"
        f"| fingerprint | `{card.get('base_model_fingerprint', '?')}` |",
        "## Evaluation\n\n" + (f"Held-out prompts ({sizes}), never used in training. " if sizes else "")
        + "Value [95% interval] (n).\n\n" + evaluation_table(metrics, base_metrics, facts.guard_metrics),
        "## Known limits\n\n" + "\n".join(_limits(metrics, facts, serve)),
        # last: the longest section, and the one a description cut to 5000 characters can lose
        "## Training data and lineage\n\n" + _lineage(lineage, prompt_set, facts.sources, facts.stages),
    ]
    return "\n\n".join(sections) + "\n"


def description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card cut at a line to fit the registry's description field, saying where the rest is."""
    if len(card) <= limit:
        return card
    note = f"\n\n… (cut to fit; the full card is the version's `{CARD_FILE}` artifact)"
    head = card[: limit - len(note)]
    return head[: head.rfind("\n")] + note
