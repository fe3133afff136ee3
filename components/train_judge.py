"""Stage ``train_judge``: fit the held-out evaluation judge on the gold set and score every judge.

Fits ``components.eval.heldout`` on the gold set's ``calibration`` split, then scores it and the
reward judges (keyword, embedding, ensemble, evidence: what curation and RL can use) on the ``test`` split,
which no judge was fitted on: accuracy, Cohen's κ and per-class precision/recall. Outputs
``judge.json`` (the classifier, JSON weights), ``metrics.json`` (``gold/*``, ``judge/<name>/*``)
and ``report.md``. ``evaluate`` reads both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.core import stage_cli, tracking
from components.core.config import require, stage_config
from components.core.errors import UserError
from components.core.io import read_table, write_json, write_text
from components.eval import gold as gold_set
from components.eval import heldout
from components.eval.judges import JUDGES, VERDICTS, graded_text, judge_completions, make_judge
from components.eval.stats import cohen_kappa, per_class

log = logging.getLogger("craft.train_judge")
STAGE = "train_judge"
KAPPA_TARGET = 0.8


@dataclass(frozen=True)
class TrainJudgeConfig:
    """params.yaml:train_judge."""

    alpha: float = 1.0
    """L2 penalty of the judge's MLPs; > 0 (chosen by grouped cross-validation on calibration)."""
    compare: tuple[str, ...] = JUDGES
    """Other judges scored on the gold test split beside the held-out one."""

    def __post_init__(self) -> None:
        require(self.alpha > 0, f"train_judge.alpha={self.alpha!r}: use a positive value, e.g. 1.0.")
        require(set(self.compare) <= set(JUDGES), f"train_judge.compare={list(self.compare)!r}: choose from {JUDGES}.")


def score(judge, rows: pd.DataFrame) -> tuple[dict, list[str]]:
    """Agreement of ``judge`` with the gold labels of ``rows`` (judged like evaluation does)."""
    pred = [v.label for v in judge_completions(judge, list(rows.prompt), list(rows.completion))]
    truth = list(rows.label)
    m = {"gold_accuracy": sum(t == p for t, p in zip(truth, pred)) / len(truth),
         "gold_kappa": cohen_kappa(truth, pred)}
    for label, s in per_class(truth, pred, VERDICTS).items():
        m[f"{label}_precision"], m[f"{label}_recall"] = s["precision"], s["recall"]
    return m, pred


def inter_annotator(gold: pd.DataFrame, second: pd.DataFrame | None) -> dict:
    """Agreement between the gold labels and a second, blind labelling (``id``, ``label_second``)
    of some of the same rows."""
    if second is None or second.empty:
        return {}
    missing = sorted({"id", "label_second"} - set(second.columns))
    if missing:
        raise UserError(f"second labels lack column(s) {missing}: give id and label_second per row.")
    second = second[["id", "label_second"]].merge(gold[["id", "label"]].rename(columns={"label": "label_first"}), on="id")
    if second.empty:
        raise UserError("no second label matches a gold row id; label rows of data/gold/labels.jsonl.")
    return {"gold/second_label_rows": len(second),
            "gold/inter_annotator_kappa": cohen_kappa(list(second.label_first), list(second.label_second)),
            "gold/inter_annotator_agreement": float((second.label_first == second.label_second).mean())}


def require_disjoint(gold: pd.DataFrame, prompts: pd.DataFrame | None) -> None:
    """Gold transcripts must not answer evaluation prompts (the judge would be fitted on them)."""
    if prompts is None:
        return
    clash = set(gold.prompt_id) & set(prompts[prompts.split == "test"].prompt_id)
    if clash:
        raise UserError(f"{len(clash)} gold prompt(s) are evaluation (test) prompts, e.g. {sorted(clash)[:3]}; "
                        "drop those rows or re-sample them with `craft gold-sample` (it draws non-test prompts).")


def run(cfg: TrainJudgeConfig, gold: pd.DataFrame, out: Path, second: pd.DataFrame | None = None) -> dict:
    """Fit on calibration, score every judge on test. Returns the metrics."""
    cal, test = gold[gold.split == "calibration"], gold[gold.split == "test"]
    judge = heldout.fit(list(cal.prompt), [graded_text(c) for c in cal.completion], list(cal.label), cfg.alpha)
    judge.save(out / "judge.json")
    metrics: dict = {"gold/rows": len(gold), "gold/calibration_rows": len(cal), "gold/test_rows": len(test),
                     **{f"gold/test_{k}": int((test.label == k).sum()) for k in VERDICTS}, **inter_annotator(gold, second)}
    judges = [heldout.HeldOutJudge.load(out / "judge.json")] + [make_judge(n) for n in cfg.compare]
    for j in judges:  # the saved file is scored, so what evaluate loads is what was measured
        m, _ = score(j, test)
        metrics.update({f"judge/{j.name}/{k}": v for k, v in m.items()})
    return metrics


def report(metrics: dict) -> str:
    names = sorted({k.split("/")[1] for k in metrics if k.startswith("judge/")}, key=lambda n: (n != "heldout", n))  # set order varies by run
    lines = ["| judge | accuracy | κ | " + " | ".join(f"{c} P / R" for c in VERDICTS) + " |", "|---" * (3 + len(VERDICTS)) + "|"]
    for n in names:
        g = lambda k: metrics.get(f"judge/{n}/{k}", float("nan"))  # noqa: E731
        lines.append(f"| {n} | {g('gold_accuracy'):.1%} | {g('gold_kappa'):.2f} | "
                     + " | ".join(f"{g(c + '_precision'):.2f} / {g(c + '_recall'):.2f}" for c in VERDICTS) + " |")
    kappa = metrics.get("judge/heldout/gold_kappa", float("nan"))
    verdict = "meets" if kappa >= KAPPA_TARGET else "MISSES"
    iaa = (f" A second labeller relabelled {metrics['gold/second_label_rows']} rows blind: Cohen's κ between the two "
           f"labellings {metrics['gold/inter_annotator_kappa']:.2f}, the ceiling any judge can be measured against."
           if "gold/inter_annotator_kappa" in metrics else "")
    return (f"# train_judge\n\nGold set: {metrics['gold/rows']} labelled transcripts (data/gold/GUIDELINES.md); the held-out judge was fitted "
            f"on {metrics['gold/calibration_rows']} (calibration) and is scored with every other judge on "
            f"{metrics['gold/test_rows']} it never saw (test: "
            + ", ".join(f"{metrics[f'gold/test_{c}']} {c}" for c in VERDICTS) + ")." + iaa + "\n\n" + "\n".join(lines)
            + f"\n\nThe held-out judge's κ = {kappa:.2f} {verdict} the target κ ≥ {KAPPA_TARGET}.\n")


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--gold", True, "labelled gold set (data/gold/labels.jsonl)"),
        ("--second", False, "a second, blind labelling of some rows (data/gold/second_labels.jsonl)"),
        ("--prompts", False, "ingest output: refuse gold rows on evaluation prompts (data/ingest/prompts.parquet)"),
        ("--out", True, "output folder (data/train_judge)"),
    ])
    cfg = stage_config(TrainJudgeConfig, STAGE, params)
    out = Path(args.out)
    with tracking.stage_run(STAGE, cfg):
        second = read_table(args.second) if args.second else None
        gold = gold_set.load(args.gold)
        require_disjoint(gold, read_table(args.prompts) if args.prompts else None)
        metrics = run(cfg, gold, out, second)
        write_json(out / "metrics.json", metrics)
        write_text(out / "report.md", report(metrics))
        tracking.log_stage_outputs(STAGE, metrics, [out / "report.md", out / "judge.json"])
    log.info("held-out judge κ %.3f on %d gold test rows", metrics["judge/heldout/gold_kappa"], metrics["gold/test_rows"])
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
