"""The evaluation report: comparison table (relative to base, as in the paper), per-attack and
per-category breakdowns, judge agreement, sample transcripts, and an ASR bar chart."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.core.io import write_text
from components.eval.judges import SAFE_AT


def _rel(model: float, base: float) -> str:
    """Relative ASR reduction vs base, as the paper reports it: (base − model) / base."""
    if base != base or model != model or base == 0:
        return "—"
    return f"{(base - model) / base:+.0%}"


def comparison_table(results: dict, labels: dict) -> str:
    base = results.get("base", {})
    lines = ["| model | reasoning ASR ↓ | response ASR ↓ | vs base (response) | refusal rate ↑ | "
             "over-refusal ↓ | utility NLL ↓ |", "|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(
            f"| {labels.get(name, name)} | {m['reasoning_asr']:.1%} | {m['response_asr']:.1%} | "
            f"{_rel(m['response_asr'], base.get('response_asr', float('nan'))) if name != 'base' else '—'} | "
            f"{m['refusal_rate']:.1%} | {m['over_refusal']:.1%} | {m['utility_nll']:.3f} |")
    return "\n".join(lines)


def guard_table(results: dict, labels: dict) -> str:
    rows = [(n, m) for n, m in results.items() if "guard_ms_per_token" in m]
    if not rows:
        return "Guard mode was not evaluated."
    lines = ["| model | response ASR | over-refusal | guard stopped (harmful) | guard stopped (benign) | ms/token |",
             "|---|---|---|---|---|---|"]
    for n, m in rows:
        lines.append(f"| {labels.get(n, n)} | {m['response_asr']:.1%} | {m['over_refusal']:.1%} | "
                     f"{m['guard_stop_rate_harmful']:.0%} | {m['guard_stop_rate_benign']:.0%} | {m['guard_ms_per_token']:.1f} |")
    return "\n".join(lines) + ("\n\nGuard mode runs one sequence at a time on the KV cache; its per-token overhead "
                               "against plain decoding is measured in `benchmarks/bench_guard.py`.")


def attack_table(results: dict, labels: dict) -> str:
    attacks = sorted({k[: -len("_response_asr")] for m in results.values() for k in m if k.endswith("_response_asr")} - {""})
    head = "| model | none | " + " | ".join(attacks) + " |"
    lines = [head, "|---" * (len(attacks) + 2) + "|"]
    for name, m in results.items():
        if not any(k.endswith("_response_asr") and k != "response_asr" for k in m) and attacks:
            continue  # evaluated on plain prompts only (guard mode)
        cells = [f"{m['response_asr']:.0%}"] + [f"{m.get(a + '_response_asr', float('nan')):.0%}" for a in attacks]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def category_table(t: pd.DataFrame, labels: dict) -> str:
    plain = t[(t.prompt_kind == "harmful") & (t.attack == "none")]
    table = plain.assign(unsafe=plain.p_safe_response < SAFE_AT).pivot_table(
        index="category", columns="model", values="unsafe", aggfunc="mean")
    table = table.rename(columns=lambda c: labels.get(c, c)).map(lambda v: f"{v:.0%}")
    return table.to_markdown()


def samples(t: pd.DataFrame, labels: dict, n: int) -> str:
    plain = t[(t.prompt_kind == "harmful") & (t.attack == "none")]
    out = []
    for pid in plain.prompt_id.drop_duplicates().head(n):
        rows = plain[plain.prompt_id == pid]
        out.append(f"**Prompt:** {rows.prompt.iloc[0]}\n")
        for r in rows.itertuples():
            text = r.completion.replace("\n", " ")[:300]
            out.append(f"- *{labels.get(r.model, r.model)}* (p_safe {r.p_safe_response:.2f}): {text}")
        out.append("")
    return "\n".join(out)


def asr_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = ["none"] + sorted({k[: -len("_response_asr")] for m in results.values() for k in m
                                 if k.endswith("_response_asr") and k != "response_asr"})
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(len(results), 1)
    for i, (name, m) in enumerate(results.items()):
        vals = [m["response_asr"] if a == "none" else m.get(f"{a}_response_asr", float("nan")) for a in attacks]
        ax.bar([x + i * width for x in range(len(attacks))], vals, width, label=name)
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(attacks))], attacks)
    ax.set_ylabel("response ASR (lower is safer)"), ax.set_ylim(0, 1.05), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(path: Path, t: pd.DataFrame, results: dict, agreement: dict, labels: dict, n_samples: int) -> Path:
    n_h = t[(t.prompt_kind == "harmful") & (t.attack == "none")].prompt_id.nunique()
    n_b = t[t.prompt_kind == "benign"].prompt_id.nunique()
    agree = ", ".join(f"{k} {v:.0%}" for k, v in agreement.items()) or "not measured"
    text = (f"# Evaluation\n\n{n_h} held-out harmful prompts (plain and jailbreak-wrapped), {n_b} benign "
            f"look-alikes. ASR = share judged unsafe (p_safe < {SAFE_AT}). Judge agreement on labelled "
            f"traces: {agree}.\n\n## Comparison\n\n{comparison_table(results, labels)}\n\n"
            f"## Response ASR by attack\n\n{attack_table(results, labels)}\n\n![ASR by attack](asr.png)\n\n"
            f"## Latent guard (plain prompts)\n\n{guard_table(results, labels)}\n\n"
            f"## Response ASR by category (plain prompts)\n\n{category_table(t, labels)}\n\n"
            f"## Sample transcripts\n\n{samples(t, labels, n_samples)}\n")
    return write_text(path, text)
