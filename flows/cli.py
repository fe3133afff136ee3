"""``craft``: the command line of the CRAFT pipeline.

    craft run                     # whole pipeline (Prefect flow over the DVC stages)
    craft run --stages validate   # some stages only
    craft validate PATH           # check any pair-dataset file and write a report
    craft evaluate --model DIR --prompts FILE   # evaluate any model on your own prompts
    craft register | promote | rollback | models # the MLflow registry
    craft audit "PROMPT" [--guard]              # per-token latent safety trace
    craft schedule --cron "0 3 * * 0"           # scheduled retraining
    craft seeds --seeds 1,2                      # how much the results move with the training seed
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from components.core import env


def _out_folder(path: str | Path) -> Path:
    """An output folder argument: refused (one line, exit 2) when it names an existing file."""
    from components.core.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is an existing file; give a folder to write the report into.")
    return path


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from components.core.tracking import ensure_store, require_reachable
    from flows.settings import check_params
    from flows.stages import select

    # Everything a user can get wrong is checked before Prefect starts: one line, exit 2.
    stages = args.stages.split(",") if args.stages else None
    select(stages)  # a stage-name typo
    check_params(Path(args.workspace) / "params.yaml")  # any bad value, in any section
    from flows.pipeline import StageFailed, WorkspaceBusy, pipeline, workspace_lock  # prefect: import after the checks

    with workspace_lock(Path(args.workspace).resolve()):  # another run: refused at once (the flow re-takes it)
        pass
    ensure_store()  # a configured MLflow server that is down
    if os.environ.get("PREFECT_API_URL"):
        require_reachable(os.environ["PREFECT_API_URL"].rstrip("/") + "/health", "Prefect API", "PREFECT_API_URL")
    try:
        results = pipeline(workspace=args.workspace, stages=stages, force=args.force, register_model=not args.no_register)
    except (StageFailed, WorkspaceBusy) as exc:
        print(f"\ncraft run: {exc}", file=sys.stderr)
        return exc.exit_code
    for r in results:
        print(f"  {r['stage']:<10} {r['status']:<8} {r['seconds']:>7.1f}s")
    print("Pipeline finished. See `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` for runs.")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from components.core.config import load_params, stage_config
    from components.validate import ValidateConfig, run, to_markdown, write_report

    params = load_params(args.params) if Path(args.params).exists() else {}
    cfg = stage_config(ValidateConfig, "validate", params)
    out = _out_folder(args.out) if args.out else Path(args.path).with_name(Path(args.path).stem + "_validation")
    report = run(args.path, cfg)
    files = write_report(report, out)
    print(to_markdown(report))
    print(f"Report: {files['markdown']} and {files['html']}")
    return 0 if report.success else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from components.core.config import load_params, stage_config
    from components.evaluate import EvaluateConfig, evaluate_file
    from components.lm.source import model_config

    params = load_params(args.params) if Path(args.params).exists() else {}
    cfg = stage_config(EvaluateConfig, "evaluate", params)
    model_cfg = model_config(params)
    out = _out_folder(args.out)
    if args.model != "base" and not Path(args.model).exists():
        from components.core.errors import UserError

        raise UserError(f"--model {args.model}: no such folder; give `base`, a pipeline output such as "
                        "data/train_rl, or an HF model directory.")
    results = evaluate_file(args.model, args.prompts, cfg, model_cfg, out, with_base=args.with_base)
    print((out / "report.md").read_text())
    print(f"Report: {out / 'report.md'}; transcripts: {out / 'transcripts.parquet'}")
    return 0 if results else 1


def _promote_cfg(args):
    from components.core.config import load_params, stage_config
    from components.registry.promote import PromoteConfig

    params = load_params(Path(args.workspace) / "params.yaml") if (Path(args.workspace) / "params.yaml").exists() else {}
    cfg = stage_config(PromoteConfig, "promote", params)
    return cfg if not getattr(args, "name", None) else PromoteConfig(**{**cfg.__dict__, "model_name": args.name})


def _registry_ready() -> None:
    """Before any command that talks to MLflow: cut MLflow's HTTP retries short (seconds, not
    minutes) and check a tracking server answers, so a down server is one line, exit 2, in seconds."""
    from components.core.tracking import ensure_store, fail_fast_http

    fail_fast_http()
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # retry chatter; the error says it all
    ensure_store()


def _cmd_register(args: argparse.Namespace) -> int:
    _registry_ready()  # before Prefect starts
    from flows.registration import register_flow

    version = register_flow(workspace=args.workspace, model_key=args.model_key)
    print(f"registered version {version} as challenger")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from components.registry.promote import PromotionRefused, gate_table, promote

    _registry_ready()
    try:
        result = promote(_promote_cfg(args), force=args.force, reason=args.reason or "")
    except PromotionRefused as exc:
        print(f"craft promote: REFUSED. {exc}", file=sys.stderr)
        print("Nothing changed in the registry. Use --force --reason '…' to override.", file=sys.stderr)
        return 1
    if result["checks"]:
        print(gate_table(result["checks"]))
    print(result.get("note") or f"version {result['version']} is now champion (previous: {result['previous'] or 'none'})")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from components.registry.promote import rollback

    _registry_ready()
    result = rollback(_promote_cfg(args), reason=args.reason or "")
    print(f"champion is version {result['champion']} again (version {result['demoted']} demoted)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from components.registry.promote import list_versions

    cfg = _promote_cfg(args)
    _registry_ready()
    rows = list_versions(cfg.model_name)
    if not rows:
        print(f"no versions of {cfg.model_name} registered yet (run `craft run` or `craft register`).")
        return 0
    table = Table(title=f"{cfg.model_name} versions")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()])
    Console(width=160).print(table)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from components.core.config import load_params
    from components.eval import audit
    from components.lm.source import model_config
    from components.lm.under_test import load_under_test, resolve_spec

    params = load_params(args.params) if Path(args.params).exists() else {}
    cfg = audit.audit_config(params, threshold=args.threshold, patience=args.patience, guard=args.guard,
                             max_new_tokens=args.max_new_tokens)
    registered = args.model.startswith("models:/")
    if registered or args.log_mlflow:
        _registry_ready()  # before loading a model: a down server is one line in seconds
    if registered:
        from components.core.tracking import mlflow_errors

        with mlflow_errors(f"download {args.model}", not_found=f"{args.model} is not in the model registry; "
                           "`craft models` lists the registered versions."):
            model_dir = resolve_spec(args.model)
    else:
        model_dir = resolve_spec(args.model)
    head_dir = audit.find_head(model_dir, args.head)
    lm = load_under_test(model_dir, model_config(params))
    head, head_id = audit.load_head(head_dir, lm.device)
    record = audit.run(cfg, lm, head, args.prompt, _out_folder(args.out), head_id=head_id, track=args.log_mlflow)
    folder = Path(args.out) / record.record_id
    console = Console()
    console.print(audit.render_terminal(record))
    console.print("\n" + audit.summary(record))
    console.print(f"record: {folder / 'record.json'}  plot: {folder / 'trajectory.png'}")
    return 0


def _cmd_gold_sample(args: argparse.Namespace) -> int:
    from components.core.config import load_params
    from components.core.io import read_table, write_table
    from components.eval import gold
    from components.lm.source import model_config

    model_cfg = model_config(load_params(args.params))
    models = {Path(m).name if m != "base" else "base": m for m in args.models.split(",") if m}
    rows = gold.sample(models, read_table(args.prompts), gold.SampleSpec(seed=args.seed), model_cfg)
    write_table(args.out, rows)
    print(f"{len(rows)} transcripts to label in {args.out} (guidelines: data/gold/GUIDELINES.md)")
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from flows.schedule import serve

    return serve(args.workspace, args.cron, args.stages.split(",") if args.stages else None, args.name)


def _cmd_seeds(args: argparse.Namespace) -> int:
    from components.eval.seed_spread import SweepConfig, parse_seeds

    cfg = SweepConfig(parse_seeds(args.seeds))  # a bad list: one line, exit 2, before Prefect loads
    from flows.pipeline import StageFailed, WorkspaceBusy
    from flows.seeds import OUT, require_committed, seed_sweep

    require_committed(Path(args.workspace))  # before the flow starts: one line, exit 2
    try:
        seed_sweep(list(cfg.seeds), workspace=args.workspace)
    except (StageFailed, WorkspaceBusy) as exc:
        print(f"\ncraft seeds: {exc}", file=sys.stderr)
        return 1
    print((Path(args.workspace) / OUT / "spread.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="craft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline end to end (or some stages)",
                       description="Run the DVC stages in order as a Prefect flow with MLflow tracking.")
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml and params.yaml")
    p.add_argument("--stages", help="comma-separated stage names (default: all, in order)")
    p.add_argument("--force", action="store_true", help="re-run stages even if DVC sees no change")
    p.add_argument("--no-register", action="store_true", help="do not register the trained model as challenger")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="validate a pair-dataset file and write a report",
                       description="Run the pair-dataset GX suites on PATH (.parquet, .jsonl, .json, .csv). "
                                   "Exit 0 when every check passes, 1 otherwise.")
    p.add_argument("path", help="file in the pair-dataset schema (README: Pair dataset schema)")
    p.add_argument("--params", default="params.yaml", help="thresholds from params.yaml:validate (defaults if absent)")
    p.add_argument("--out", help="report folder (default: <file>_validation next to the file)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("evaluate", help="evaluate any model on any prompt file and write the report",
                       description="Generate, judge and report reasoning/response ASR, jailbreak ASR, "
                                   "over-refusal and utility for MODEL on a prompt file with columns "
                                   "prompt, prompt_kind (harmful|benign)[, category, reference].")
    p.add_argument("--model", required=True, help="'base' (params.yaml:model), a pipeline output folder "
                                                   "(data/train_rl) or any local HF model directory")
    p.add_argument("--prompts", required=True, help="JSONL/CSV/Parquet prompt file")
    p.add_argument("--out", default="evaluation", help="report folder (default: ./evaluation)")
    p.add_argument("--with-base", action="store_true", help="also evaluate the base model for comparison")
    p.add_argument("--params", default="params.yaml", help="settings from params.yaml:evaluate/model")
    p.set_defaults(func=_cmd_evaluate)

    def registry_args(p):
        p.add_argument("--workspace", default=".", help="project folder (params.yaml:promote, mlruns/)")
        p.add_argument("--name", help="registered model name (default: params.yaml:promote.model_name)")

    p = sub.add_parser("register", help="register data/train_rl as the new challenger",
                       description="Log the trained model (adapter, base reference, heads, tokenizer) as an MLflow "
                                   "pyfunc with evaluation metrics and lineage tags; alias it 'challenger'.")
    registry_args(p)
    p.add_argument("--model-key", default="train_rl", help="pipeline output under data/ to register")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("promote", help="gated promotion of the challenger to champion",
                       description="Compare challenger with champion against params.yaml:promote; move the "
                                   "'champion' alias only if every rule passes (or --force with --reason).")
    registry_args(p)
    p.add_argument("--force", action="store_true", help="promote despite a failed gate (needs --reason)")
    p.add_argument("--reason", help="why (recorded on the version)")
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("rollback", help="give champion back to the previous version",
                       description="Move 'champion' back to the version the current champion replaced.")
    registry_args(p)
    p.add_argument("--reason", help="why (recorded on the demoted version)")
    p.set_defaults(func=_cmd_rollback)

    p = sub.add_parser("models", help="list registered versions with aliases, metrics and lineage",
                       description="Table of every version: aliases, response/reasoning ASR, over-refusal, "
                                   "utility NLL, git sha, run id, creation time.")
    registry_args(p)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("audit", help="generate with a per-token latent safety trace (audit record + plot)",
                       description="Generate greedily with MODEL and score every token with the CRAFT head: "
                                   "writes record.json and trajectory.png, prints tokens coloured by latent safety.")
    p.add_argument("prompt", help="the prompt to audit")
    p.add_argument("--model", default="data/train_rl", help="'base', a pipeline output folder, an HF directory "
                                                             "or models:/NAME@ALIAS (default: data/train_rl)")
    p.add_argument("--head", help="head folder (default: the model's head/, else data/train_head/head)")
    p.add_argument("--max-new-tokens", type=int, help="greedy decoding budget (default 96)")
    p.add_argument("--threshold", type=float, help="latent p_safe below this is 'unsafe' "
                                                   "(default: params.yaml:evaluate.guard_threshold)")
    p.add_argument("--guard", action="store_true", help="stop generation after --patience unsafe tokens in a row")
    p.add_argument("--patience", type=int, help="default: params.yaml:evaluate.guard_patience")
    p.add_argument("--out", default="audits", help="folder for audit records")
    p.add_argument("--log-mlflow", action="store_true", help="also log the record and plot to MLflow")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("seeds", help="re-run the pipeline under other training seeds and report the spread",
                       description="One DVC experiment per seed (dvc exp run --temp, every training stage's "
                                   "seed set, the held-out split fixed), then mean, sd and range of the "
                                   "headline results beside the committed run: seeds/spread.md.")
    p.add_argument("--seeds", default="1,2", help="comma-separated training seeds (default 1,2; ~12 min each on 2 CPU cores)")
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml and params.yaml")
    p.set_defaults(func=_cmd_seeds)

    p = sub.add_parser("gold-sample", help="sample transcripts of the pipeline's models to hand-label for the gold set",
                       description="Greedy (and some sampled) completions of non-test prompts by each model, "
                                   "written unlabelled; label them following data/gold/GUIDELINES.md and append "
                                   "them to data/gold/labels.jsonl.")
    p.add_argument("--models", default="base,data/train_sft,data/train_rl_text,data/train_rl",
                   help="comma-separated models: base or pipeline output folders (default: the four the pipeline trains)")
    p.add_argument("--prompts", default="data/ingest/prompts.parquet", help="ingest output (only non-test prompts are used)")
    p.add_argument("--out", default="data/gold/unlabelled.jsonl", help="where to write the rows to label")
    p.add_argument("--seed", type=int, default=0, help="prompt draw and sampling seed (default 0)")
    p.add_argument("--params", default="params.yaml", help="settings file (model and runtime sections)")
    p.set_defaults(func=_cmd_gold_sample)

    p = sub.add_parser("schedule", help="serve the pipeline on a cron schedule (Prefect deployment)",
                       description="Serve the craft-pipeline flow as a Prefect deployment with a cron schedule. "
                                   "Uses PREFECT_API_URL when set; otherwise starts a local Prefect server on "
                                   "127.0.0.1. Runs until interrupted.")
    p.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 0" (Sundays 03:00)')
    p.add_argument("--workspace", default=".", help="project folder the scheduled runs use")
    p.add_argument("--stages", help="comma-separated stages (default: all)")
    p.add_argument("--name", default="craft-retrain", help="deployment name")
    p.set_defaults(func=_cmd_schedule)
    return parser


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the first call)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure(getattr(args, "workspace", "."))
    _log_to_stderr()
    from components.core.errors import guarded

    return guarded(f"craft {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
