"""``craft reward-check``: whether CRAFT's reward orders a policy's own samples the way the held-out
judge does more often than the text-only ablation's reward (components/rl/reward_check.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_reward_check(args: argparse.Namespace) -> int:
    import pandas as pd

    from components import train_rl
    from components.core.io import read_table, write_table
    from components.eval.judges import make_judge
    from components.head.model import SafetyHead
    from components.lm import source
    from components.lm.under_test import load_unmerged
    from components.rl import reward_check as rc
    from components.rl.rewards import CraftReward

    models, params = _checked(args)
    cfg, ablation = train_rl.config_of(params), train_rl.config_of(params, args.ablation)
    rewards = rc.rewards_of(cfg, ablation)
    spec = rc.CheckSpec(args.per_kind, args.seed, n_boot=args.n_boot)
    model_cfg = source.model_config(params)
    same_base(models, model_cfg)
    prompts = rc.draw(train_rl.prompt_pools(read_table(args.prompts), cfg)[0], spec)
    reward = CraftReward(SafetyHead.load(args.head), make_judge(cfg.judge), rewards["craft"], cfg.reward_source)
    measure = make_judge(args.measure)
    frames = []
    for m in models:
        lm, model = load_unmerged(m, model_cfg)
        frames.append(rc.sample(model, lm.tokenizer, reward, measure, prompts, cfg, spec, lm.device, lm.engine,
                                policy=m))
    frame = pd.concat(frames, ignore_index=True)
    summary = rc.summarize(frame, rewards, ("craft", "ablation"), spec.n_boot)
    text = rc.report(summary, rewards, ("craft", "ablation"), models, args.measure)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "samples.parquet", frame)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(rc.as_json(summary), indent=2) + "\n")
    print(text)
    return 0


def same_base(models: list[str], model_cfg) -> None:
    """Refuse an output folder whose adapter was trained on another base than params' model: the head
    and R_lat read params' model, so the check would score another model's states."""
    from components.core.errors import UserError
    from components.lm import source

    fingerprint = source.resolve(model_cfg).fingerprint
    for m in models:
        meta = json.loads((Path(m) / "model.json").read_text()) if m != "base" else {}
        trained_on = meta.get("base_model_fingerprint", fingerprint)
        if trained_on != fingerprint:
            raise UserError(f"--models: {m} was trained on base {meta.get('base_model_source')} ({trained_on}), but "
                            f"the head and the reward read model.source {model_cfg.source} ({fingerprint}); set "
                            "model.source to that base, or check outputs trained on this one.")


def _checked(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The models and the params, after every check that needs no model: a bad input fails in one
    line before anything loads or samples."""
    from components.core.config import load_params
    from components.core.errors import UserError
    from components.eval.judges import valid_judge
    from components.rl.config import TrainRLConfig

    models = [m for m in args.models.split(",") if m]
    if not models:
        raise UserError("--models: name at least one model (base or a pipeline output folder).")
    for m in models:
        if m != "base" and not (Path(m) / "model.json").is_file():
            raise UserError(f"--models: {m} is neither 'base' nor a pipeline output folder with model.json.")
    params = load_params(args.params)
    if args.ablation not in params:
        raise UserError(f"--ablation {args.ablation}: {args.params} has no such section; name the params section "
                        "that holds the ablation's reward weights (train_rl_text in this project).")
    if not valid_judge(args.measure):
        raise UserError(f"--measure {args.measure}: not a judge; use heldout (the default), heldout:<path>, "
                        "keyword, embedding, ensemble, evidence or hf:<path to a local guard model>.")
    reward_judge = (params.get("train_rl") or {}).get("judge", TrainRLConfig.judge)
    if args.measure == reward_judge:
        raise UserError(f"--measure {args.measure}: that is train_rl.judge, the judge the policies were trained "
                        "to please; measure with one no stage rewards with (heldout, the default).")
    if args.measure.startswith("hf:") and not Path(args.measure[3:]).is_dir():
        raise UserError(f"--measure {args.measure}: no local guard model folder at {args.measure[3:]}.")
    if not (Path(args.head) / "head.json").is_file():
        raise UserError(f"--head {args.head}: no trained head there (head.json); run `craft run --stages "
                        "train_head` or pass the folder train_head wrote.")
    return models, params


def add_check_parser(sub) -> None:
    """Add ``reward-check`` to the ``craft`` subparsers ``sub``."""
    p = sub.add_parser("reward-check", help="does CRAFT's reward order a policy's samples more like the held-out "
                                            "judge than the text-only ablation's reward? (no training)",
                       description="Each model samples one group per prompt on --per-kind harmful and as many "
                                   "benign train prompts, with an RL step's sampling settings (train_rl's group "
                                   "size, temperature, new tokens). Every sample gets the RL reward's parts and the --measure judge's "
                                   "verdict; the report gives, for CRAFT's weights, the ablation's and R_lat alone, "
                                   "the share of within-group pairs (one right, one wrong) each ranks the right "
                                   "way, with 95% bootstrap intervals over prompts. Writes samples.parquet, "
                                   "report.md and summary.json to --out. About 8 minutes a model on a 2-core AVX2 CPU "
                                   "for the default model (docs/stage2.md round 34). An init: sft output is refused.")
    p.add_argument("--models", default="data/train_rl,data/train_rl_text",
                   help="comma-separated: base or pipeline output folders (the adapter is attached unmerged, so "
                        "under reward_source: reference R_lat reads the base model, as the RL stages do)")
    p.add_argument("--prompts", default="data/ingest/prompts.parquet", help="ingest output (train split only)")
    p.add_argument("--head", default="data/train_head/head", help="trained head folder")
    p.add_argument("--per-kind", type=int, default=40, help="train prompts of each kind")
    p.add_argument("--seed", type=int, default=34, help="prompt draw and sampling seed")
    p.add_argument("--measure", default="heldout", help="the judge whose verdicts decide right and wrong")
    p.add_argument("--ablation", default="train_rl_text", help="params section whose reward weights are the ablation's")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (100 or more)")
    p.add_argument("--out", default="reports/reward-check", help="output folder")
    p.add_argument("--params", default="params.yaml", help="settings file (model and train_rl sections)")
    p.set_defaults(func=cmd_reward_check)
