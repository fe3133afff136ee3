"""``craft reward-check``: whether CRAFT's reward orders a policy's own samples the way the held-out
judge does more often than the text-only ablation's reward (components/rl/reward_check.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_reward_check(args: argparse.Namespace) -> int:
    from components import train_rl
    from components.core.config import stage_config
    from components.core.io import read_table, write_table
    from components.eval.judges import make_judge
    from components.head.model import SafetyHead
    from components.lm import runtime, source
    from components.lm.under_test import load_adapted
    from components.rl import reward_check as rc
    from components.rl.rewards import CraftReward, RewardWeights

    models, params = _checked(args)
    cfg = stage_config(train_rl.TrainRLConfig, "train_rl", params)
    section = {**(params.get("train_rl") or {}), **(params.get(args.ablation) or {})}
    ablation = stage_config(train_rl.TrainRLConfig, args.ablation, {args.ablation: section})
    model_cfg = source.model_config(params)
    spec = rc.CheckSpec(args.per_kind, args.seed)
    pools, _ = train_rl.prompt_pools(read_table(args.prompts), cfg)
    prompts = rc.draw(pools, spec)
    head = SafetyHead.load(args.head)
    reward = CraftReward(head, make_judge(cfg.judge), RewardWeights(cfg.w_lat, cfg.w_txt, cfg.w_cons),
                         cfg.reward_source)
    measure = make_judge(args.measure)
    frames = []
    for m in models:
        if m == "base":
            lm = runtime.load(source.resolve(model_cfg), model_cfg)
            model = lm.model
        else:
            lm, model = load_adapted(Path(m), model_cfg)
        frames.append(rc.sample(model, lm.tokenizer, reward, measure, prompts, cfg, spec, lm.device, lm.engine,
                                policy=m))
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True)
    rewards = {"craft": RewardWeights(cfg.w_lat, cfg.w_txt, cfg.w_cons),
               "ablation": RewardWeights(ablation.w_lat, ablation.w_txt, ablation.w_cons),
               "latent": RewardWeights(1.0, 0.0, 0.0)}
    summary = rc.summarize(frame, rewards, ("craft", "ablation"), args.n_boot)
    text = rc.report(summary, rewards, ("craft", "ablation"), models, args.measure)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "samples.parquet", frame)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


def _checked(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The models and the params, after every check that needs no model: a bad input fails in one
    line before anything loads or samples."""
    from components.core.config import load_params
    from components.core.errors import UserError
    from components.eval.judges import valid_judge

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
                                   "benign train prompts, as an RL step does (train_rl's group size, temperature, "
                                   "new tokens). Every sample gets the RL reward's parts and the --measure judge's "
                                   "verdict; the report gives, for CRAFT's weights, the ablation's and R_lat alone, "
                                   "the share of within-group pairs (one right, one wrong) each ranks the right "
                                   "way, with 95% bootstrap intervals over prompts. Writes samples.parquet, "
                                   "report.md and summary.json to --out. About 20 s per 4 prompts × 8 samples "
                                   "on 2 CPU cores for the default model (docs/stage2.md round 34).")
    p.add_argument("--models", default="data/train_rl,data/train_rl_text",
                   help="comma-separated: base or pipeline output folders (the adapter is attached unmerged, so "
                        "under reward_source: reference R_lat reads the base model, as the RL stages do)")
    p.add_argument("--prompts", default="data/ingest/prompts.parquet", help="ingest output (train split only)")
    p.add_argument("--head", default="data/train_head/head", help="trained head folder")
    p.add_argument("--per-kind", type=int, default=40, help="train prompts of each kind")
    p.add_argument("--seed", type=int, default=34, help="prompt draw and sampling seed")
    p.add_argument("--measure", default="heldout", help="the judge whose verdicts decide right and wrong")
    p.add_argument("--ablation", default="train_rl_text", help="params section whose reward weights are the ablation's")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", default="reports/reward-check", help="output folder")
    p.add_argument("--params", default="params.yaml", help="settings file (model and train_rl sections)")
    p.set_defaults(func=cmd_reward_check)
