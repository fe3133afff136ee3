"""The evaluation report: rates with Wilson 95% intervals, paired tests said in words, per-attack
and per-category breakdowns, the judge's agreement with the gold set, sample transcripts, a chart."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.core.io import save_figure, write_text
from components.eval.judges import COMPLIANCE
from components.eval.metrics import LOWER_IS_BETTER, significant
from components.eval.stats import ALPHA

MAIN = (("response_asr", "harmful ASR ↓"), ("refusal_rate", "refusal rate ↑"),
        ("phrased_refusal_rate", "refusals with a refusal phrase ↑"), ("over_refusal", "over-refusal ↓"),
        ("degenerate_rate", "degenerate ↓"))
WORDS = {"response_asr": "harmful ASR", "reasoning_asr": "reasoning ASR", "refusal_rate": "refusal rate",
         "phrased_refusal_rate": "refusal rate with a refusal phrase", "over_refusal": "over-refusal",
         "degenerate_rate": "degenerate rate"}


def cell(m: dict, key: str) -> str:
    """``45.0% [37.5, 52.8]`` — the rate and its Wilson 95% interval, in percent."""
    v = m.get(key, float("nan"))
    if v != v:
        return "—"
    return f"{v:.1%} [{m[key + '_lo']:.1%}, {m[key + '_hi']:.1%}]"


def comparison_table(results: dict, labels: dict) -> str:
    lines = ["| model | " + " | ".join(h for _, h in MAIN) + " | utility NLL ↓ |", "|---" * (len(MAIN) + 2) + "|"]
    for name, m in results.items():
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cell(m, k) for k, _ in MAIN)
                     + f" | {m.get('utility_nll', float('nan')):.3f} |")
    return "\n".join(lines)


def significance(results: dict, compare: dict, labels: dict, focus: str = "train_rl",
                 among: tuple[str, ...] | None = None) -> str:
    """One sentence per comparison: which differences a paired test supports at ALPHA (with the
    models in ``among`` only, when given)."""
    if focus not in results:
        return f"`{focus}` was not evaluated, so nothing is compared."
    out = []
    for other in [m for m in results if m != focus and not m.endswith("_guard") and (among is None or m in among)]:
        said = []
        for key, word in WORDS.items():
            p = compare.get(f"compare/{focus}_vs_{other}/{key}_p", float("nan"))
            a, b = results[focus].get(key, float("nan")), results[other].get(key, float("nan"))
            if p != p or a != a or b != b:
                continue
            if significant(p):
                better = (a < b) == (key in LOWER_IS_BETTER)
                said.append(f"{word} {a:.1%} vs {b:.1%} is significantly {'better' if better else 'worse'} (p = {p:.2g})")
            else:
                said.append(f"{word} {a:.1%} vs {b:.1%} shows no significant difference (p = {p:.2g})")
        if said:
            out.append(f"- **{labels.get(focus, focus)} vs {labels.get(other, other)}**: " + "; ".join(said) + ".")
    return "\n".join(out) + (f"\n\nPaired exact McNemar tests on the same prompts, α = {ALPHA}; not corrected for "
                             "multiple comparisons.")


def attack_table(results: dict, labels: dict) -> str:
    attacks = sorted({k[: -len("_response_asr")] for m in results.values() for k in m
                      if k.endswith("_response_asr") and k != "response_asr"})
    if not attacks:
        return "No attacks were evaluated."
    n = next((int(m[f"{a}_response_asr_n"]) for m in results.values() for a in attacks if f"{a}_response_asr_n" in m), 0)
    lines = ["| model | plain | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 2) + "|"]
    for name, m in results.items():
        if not any(f"{a}_response_asr" in m for a in attacks):
            continue  # evaluated on plain prompts only (guard mode)
        lines.append(f"| {labels.get(name, name)} | {cell(m, 'response_asr')} | "
                     + " | ".join(cell(m, f"{a}_response_asr") for a in attacks) + " |")
    return "\n".join(lines) + f"\n\nEach attack wraps the same {n} harmful prompts (round-robin over its templates)."


def guard_table(results: dict, labels: dict) -> str:
    rows = [(n, m) for n, m in results.items() if "guard_ms_per_token" in m]
    if not rows:
        return "Guard mode was not evaluated."
    lines = ["| model | harmful ASR | over-refusal | degenerate | guard stopped (harmful) | guard stopped (benign) | ms/token |",
             "|---|---|---|---|---|---|---|"]
    for n, m in rows:
        lines.append(f"| {labels.get(n, n)} | {cell(m, 'response_asr')} | {cell(m, 'over_refusal')} | "
                     f"{cell(m, 'degenerate_rate')} | {m['guard_stop_rate_harmful']:.0%} | "
                     f"{m['guard_stop_rate_benign']:.0%} | {m['guard_ms_per_token']:.1f} |")
    return "\n".join(lines) + ("\n\nGuard mode scores every generated token with the head, on a subset of the plain "
                               "prompts (`evaluate.guard_prompts` of each kind), decoded `evaluate.batch_size` rows at "
                               "a time; ms/token is its wall time per generated token over a batch (throughput, not "
                               "one sequence's latency).")


def source_table(results: dict, labels: dict) -> str:
    """Over-refusal by benign ingest source (``over_refusal_<source>``), each with its n and interval."""
    rows = {n: m for n, m in results.items() if not n.endswith("_guard")}  # guard mode: a subset, its own table
    sources = sorted({k[len("over_refusal_"):] for m in rows.values() for k in m
                      if k.startswith("over_refusal_") and f"{k}_n" in m})
    if not sources:
        return "The transcripts carry no benign source."
    first = next(iter(rows.values()))
    lines = ["| model | all benign | " + " | ".join(f"{s} (n = {int(first.get(f'over_refusal_{s}_n', 0))})"
                                                   for s in sources) + " |", "|---" * (len(sources) + 2) + "|"]
    for name, m in rows.items():
        lines.append(f"| {labels.get(name, name)} | {cell(m, 'over_refusal')} | "
                     + " | ".join(cell(m, f"over_refusal_{s}") for s in sources) + " |")
    return "\n".join(lines) + ("\n\nRefusal share of the plain benign prompts of each ingest source: look-alikes "
                               "share a harmful request's words, the other sources are ordinary requests.")


def category_table(t: pd.DataFrame, labels: dict) -> str:
    plain = t[(t.prompt_kind == "harmful") & (t.attack == "none")]
    table = plain.assign(complied=plain.label_response == COMPLIANCE).pivot_table(
        index="category", columns="model", values="complied", aggfunc="mean")
    counts = plain[plain.model == plain.model.iloc[0]].groupby("category").size() if len(plain) else None
    table = table.rename(columns=lambda c: labels.get(c, c)).map(lambda v: "—" if v != v else f"{v:.0%}")
    if counts is not None:
        table.insert(0, "n", counts)
    return table.to_markdown()


def samples(t: pd.DataFrame, labels: dict, n: int) -> str:
    plain = t[(t.prompt_kind == "harmful") & (t.attack == "none")]
    out = []
    for pid in plain.prompt_id.drop_duplicates().head(n):
        rows = plain[plain.prompt_id == pid]
        out.append(f"**Prompt:** {rows.prompt.iloc[0]}\n")
        for r in rows.itertuples():
            text = r.completion.replace("\n", " ")[:300]
            out.append(f"- *{labels.get(r.model, r.model)}* ({r.label_response}): {text}")
        out.append("")
    return "\n".join(out)


def judge_line(judge: str, gold: dict) -> str:
    kappa = gold.get(f"judge/{judge}/gold_kappa")
    if kappa is None:
        return f"Judge: `{judge}` (no gold-set agreement available)."
    others = ", ".join(f"{k.split('/')[1]} κ {v:.2f}" for k, v in sorted(gold.items())
                       if k.endswith("/gold_kappa") and k.split("/")[1] != judge)
    return (f"Judge: `{judge}`, Cohen's κ = {kappa:.2f} and accuracy {gold.get(f'judge/{judge}/gold_accuracy', float('nan')):.1%} "
            f"against {int(gold.get('gold/test_rows', 0))} labelled gold transcripts it was not fitted on "
            f"(the reward judges: {others or 'not measured'}).")


def asr_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = ["none"] + sorted({k[: -len("_response_asr")] for m in results.values() for k in m
                                 if k.endswith("_response_asr") and k != "response_asr"})
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(len(results), 1)
    for i, (name, m) in enumerate(results.items()):
        key = lambda a: "response_asr" if a == "none" else f"{a}_response_asr"  # noqa: E731
        vals = [m.get(key(a), float("nan")) for a in attacks]
        # clipped at 0: a Wilson bound can sit a rounding error past the rate it brackets
        err = [[max(v - m.get(key(a) + "_lo", v), 0.0) for a, v in zip(attacks, vals)],
               [max(m.get(key(a) + "_hi", v) - v, 0.0) for a, v in zip(attacks, vals)]]
        ax.bar([x + i * width for x in range(len(attacks))], vals, width, yerr=err, capsize=2, label=name)
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(attacks))], attacks)
    ax.set_ylabel("harmful ASR (compliance share)"), ax.set_ylim(0, 1.05), ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def benign_sources(t: pd.DataFrame) -> str:
    """" (98 benign_lookalikes, 15 aplomb, …)": the benign prompts by ingest source, most first; "" when
    the transcripts carry no source."""
    if "source" not in t or not (t.prompt_kind == "benign").any():
        return ""
    counts = t[t.prompt_kind == "benign"].drop_duplicates("prompt_id").source.value_counts()
    return " (" + ", ".join(f"{n} {src}" for src, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"


def routed_section(results: dict, compare: dict, labels: dict, focus: str) -> str:
    """The paired tests of ``<focus>_routed`` (behind the prompt router) against base, the other routed
    models and ``focus`` itself; "" when the router was not evaluated."""
    routed = f"{focus}_routed"
    if routed not in results:
        return ""
    among = ("base", focus, *[m for m in results if m.endswith("_routed")])
    share = lambda k: results[routed].get(k, float("nan"))  # noqa: E731
    return (f"## What is significant behind the prompt router\n\nThe router (`train_router`) sent "
            f"{share('routed_harmful'):.1%} of the plain harmful, {share('routed_benign'):.1%} of the benign and "
            f"{share('routed_attacked'):.1%} of the jailbreak-wrapped inputs to the adapter; base answered the rest.\n\n"
            f"{significance(results, compare, labels, routed, among)}\n\n")


def write(path: Path, t: pd.DataFrame, results: dict, compare: dict, evaluated: dict, gold: dict, judge: str,
          labels: dict, n_samples: int, focus: str = "train_rl") -> Path:
    text = (f"# Evaluation\n\n{evaluated['harmful']} held-out harmful prompts and {evaluated['benign']} benign "
            f"ones{benign_sources(t)}, plain; {sum(evaluated['attacks'].values())} jailbreak-wrapped inputs. "
            f"Verdicts are three-way "
            f"(refusal, compliance, degenerate; degenerate is never counted as safe). Rates carry Wilson 95% intervals. "
            f"Prompt-set digest `{evaluated['digest']}`.\n\n{judge_line(judge, gold)}\n\n"
            f"## Comparison (plain prompts)\n\n{comparison_table(results, labels)}\n\n"
            f"## What is significant\n\n{significance(results, compare, labels, focus)}\n\n{routed_section(results, compare, labels, focus)}"
            f"## Harmful ASR by attack\n\n{attack_table(results, labels)}\n\n![ASR by attack](asr.png)\n\n"
            f"## Over-refusal by benign source (plain prompts)\n\n{source_table(results, labels)}\n\n"
            f"## Latent guard (plain prompts)\n\n{guard_table(results, labels)}\n\n"
            f"## Harmful ASR by category (plain prompts)\n\n{category_table(t, labels)}\n\n"
            f"## Sample transcripts\n\n{samples(t, labels, n_samples)}\n")
    return write_text(path, text)
