"""The RL stage's report: summary metrics (metrics.json), curves (curves.png) and summary.md."""
from __future__ import annotations

from pathlib import Path

from components.rl.selection import Point


def summarise(history: list[dict], best: Point) -> dict:
    """Summary metrics; ``probe_refusal_rate_*`` / ``val_*``: selection metrics at step −1 (after
    the gate when ``gate_steps`` > 0) and at the selected step; ``gate_*``: the gate's first and
    last steps."""
    steps = [h for h in history if h["step"] >= 0]
    q = max(1, len(steps) // 4)
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    first = next(h for h in history if "rl/val_score" in h)
    return {
        "steps": len(steps),
        "reward_first_quarter": mean(steps[:q], "rl/reward"), "reward_last_quarter": mean(steps[-q:], "rl/reward"),
        "reward_lat_first_quarter": mean(steps[:q], "rl/reward_r_lat"), "reward_lat_last_quarter": mean(steps[-q:], "rl/reward_r_lat"),
        "kl_last": steps[-1]["rl/kl"], "kl_max": max(s["rl/kl"] for s in steps),
        "probe_refusal_rate_start": first["rl/val_refusal"], "probe_refusal_rate_end": best.val_refusal,
        "val_over_refusal_start": first["rl/val_over_refusal"], "val_over_refusal_end": best.val_over_refusal,
        "selected_step": best.step, "val_score_end": best.score,
        "obfuscation_gap_end": steps[-1].get("rl/obfuscation_gap", float("nan")),
        **{k.replace("/", "_"): v for k, v in first.items() if k.startswith("gate/")},  # gate_steps > 0
    }


def plot_curves(history: list[dict], path: Path, selected_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["step"] >= 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key in ("rl/reward", "rl/reward_r_lat", "rl/reward_r_txt", "rl/reward_r_cons"):
        axes[0].plot([h["step"] for h in steps], [h[key] for h in steps], label=key.split("/")[1])
    axes[0].set_title("reward"), axes[0].legend(fontsize=7)
    axes[1].plot([h["step"] for h in steps], [h["rl/kl"] for h in steps])
    axes[1].set_title("KL to reference (k3)")
    evals = [h for h in history if "rl/val_score" in h]
    for key in ("rl/val_refusal", "rl/val_over_refusal", "rl/val_score"):
        axes[2].plot([h["step"] for h in evals], [h[key] for h in evals], marker="o", label=key.split("/")[1])
    axes[2].axvline(selected_step, color="grey", linestyle="--", label="selected")
    axes[2].set_title("validation (selection judge)"), axes[2].set_ylim(-1.05, 1.05), axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_markdown(s: dict, name: str = "train_rl") -> str:
    return (f"# {name}\n\n{s['steps']} steps. Mean reward {s['reward_first_quarter']:+.3f} → "
            f"{s['reward_last_quarter']:+.3f} (first vs last quarter); latent reward "
            f"{s['reward_lat_first_quarter']:+.3f} → {s['reward_lat_last_quarter']:+.3f}; KL last {s['kl_last']:.4f} "
            f"(max {s['kl_max']:.4f}); obfuscation gap {s['obfuscation_gap_end']:+.3f}.\n\n"
            f"Selected adapter: step {s['selected_step']} (−1 = before RL: no RL step helped on validation), "
            f"validation score {s['val_score_end']:+.3f}; val refusal {s['probe_refusal_rate_start']:.0%} → "
            f"{s['probe_refusal_rate_end']:.0%}, val over-refusal {s['val_over_refusal_start']:.0%} → "
            f"{s['val_over_refusal_end']:.0%} (step −1 → selected).\n\n![curves](curves.png)\n")
