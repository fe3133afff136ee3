"""``craft``: the command line of the CRAFT pipeline.

    craft run                     # whole pipeline (Prefect flow over the DVC stages)
    craft run --stages validate   # some stages only
    craft validate PATH           # check any pair-dataset file and write a report
    craft evaluate --model DIR --prompts FILE   # evaluate any model on your own prompts
    craft register | promote | rollback | models # the MLflow registry
    craft audit "PROMPT" [--guard]              # per-token latent safety trace
    craft schedule --cron "0 3 * * 0"           # scheduled retraining
    craft seeds --seeds 1,2                      # how much the results move with the RL seed (--scope all: every stage)
    craft models --json                          # models, evaluate, promote: one JSON document on stdout
    craft promote --dry-run                      # the gate's decision and evidence; nothing changes
    craft cache --prune --older-than 30          # remove RL checkpoints and start adapters written over 30 days ago
    craft --version                              # package version and the workspace's git commit
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import textwrap
from pathlib import Path

from components.core import env
from flows.cli_json import emit_json
from flows.cli_json import jsonable as _jsonable  # noqa: F401 - tests call cli._jsonable
from flows.cli_check import add_check_parser
from flows.cli_ops import add_ops_parsers
from flows.cli_registry import cmd_models, cmd_promote, cmd_register, cmd_rollback, registry_ready


def _out_folder(path: str | Path) -> Path:
    """An output folder argument: refused (one line, exit 2) when it names an existing file."""
    from components.core.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is an existing file; give a folder to write the report into.")
    return path


def version_text(root: str | Path = ".") -> str:
    """``craft --version``: the installed package's version and, inside a git checkout, its commit."""
    from importlib import metadata

    from flows.lineage import git_sha

    try:
        version = metadata.version("craft-pipeline")
    except metadata.PackageNotFoundError:
        version = "(package not installed: pip install -e .)"
    sha = git_sha(Path(root))
    return f"craft {version}" + (f" (git {sha})" if sha != "unknown" else "")


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from components.core.tracking import ensure_store, require_reachable
    from flows.settings import check_params
    from flows.stages import select

    # Everything a user can get wrong is checked before Prefect starts: one line, exit 2.
    stages = args.stages.split(",") if args.stages else None
    select(stages)  # a stage-name typo
    check_params(Path(args.workspace) / "params.yaml")  # any bad value, in any section
    from components.core import lifecycle
    from flows.pipeline import (StageFailed, WorkspaceBusy, pipeline, stop_orphaned_servers,  # prefect: after
                                workspace_lock)  # the checks

    with workspace_lock(Path(args.workspace).resolve()):  # another run: refused at once (the flow re-takes it)
        pass
    ensure_store()  # a configured MLflow server that is down
    if os.environ.get("PREFECT_API_URL"):
        require_reachable(os.environ["PREFECT_API_URL"].rstrip("/") + "/health", "Prefect API", "PREFECT_API_URL")
    stop_orphaned_servers(os.environ["PREFECT_HOME"])  # left by a run killed with SIGKILL
    lifecycle.stop_on_sigterm()  # a scheduler's SIGTERM stops the stage and marks its runs KILLED
    try:
        results = pipeline(workspace=args.workspace, stages=stages, force=args.force,
                           register_model=not args.no_register, push=not args.no_push)
    except (StageFailed, WorkspaceBusy) as exc:
        print(f"\ncraft run: {exc}", file=sys.stderr)
        return exc.exit_code
    except BaseException as exc:  # Ctrl-C, SIGTERM, Prefect's termination signal
        if isinstance(exc, (Exception, SystemExit)):
            raise
        print("\ncraft run: interrupted; the running stage was stopped and its MLflow runs marked KILLED. "
              "Run `craft run` again to go on (finished stages are skipped, RL resumes from its checkpoint).",
              file=sys.stderr)
        return 130
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


def _require_model(spec: str) -> None:
    """A --model that is neither 'base', a registry URI nor an existing folder: one line."""
    if spec != "base" and not spec.startswith("models:/") and not Path(spec).exists():
        from components.core.errors import UserError

        raise UserError(f"--model {spec}: no such folder; give base, a pipeline output such as "
                        "data/train_rl, an HF model directory or models:/NAME@ALIAS.")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from components.core.config import load_params, stage_config
    from components.evaluate import EvaluateConfig, evaluate_file
    from components.lm.source import model_config

    params = load_params(args.params) if Path(args.params).exists() else {}
    cfg = stage_config(EvaluateConfig, "evaluate", params)
    model_cfg = model_config(params)
    out = _out_folder(args.out)
    _require_model(args.model)
    results = evaluate_file(args.model, args.prompts, cfg, model_cfg, out, with_base=args.with_base,
                            router_dir=Path(args.router) if args.router else None)
    if args.json:
        emit_json(args, {"model": args.model, "results": results,
                          "eval_set": json.loads((out / "eval_set.json").read_text()),
                          "report": str(out / "report.md"), "transcripts": str(out / "transcripts.parquet"),
                          "metrics": str(out / "metrics.json")})
        return 0 if results else 1
    print((out / "report.md").read_text())
    print(f"Report: {out / 'report.md'}; transcripts: {out / 'transcripts.parquet'}")
    return 0 if results else 1


def _cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from components.core.config import load_params
    from components.eval import audit
    from components.lm.source import model_config
    from components.lm.under_test import load_under_test, resolve_spec

    params = load_params(args.params) if Path(args.params).exists() else {}
    cfg = audit.audit_config(params, threshold=args.threshold, patience=args.patience, guard=args.guard,
                             max_new_tokens=args.max_new_tokens)
    _require_model(args.model)
    registered = args.model.startswith("models:/")
    if registered or args.log_mlflow:
        registry_ready()  # before loading a model: a down server is one line in seconds
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




class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """An option's default appended unless its help states one in words (options whose default is
    None say where the value comes from, e.g. params.yaml; flags are off). A description or epilog
    with line breaks is kept as written (as RawDescriptionHelpFormatter does); one paragraph is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if re.search(r"\bdefault\b", text) or action.default is None or action.nargs == 0:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every craft parser (subparsers are built with the parent's class): defaults shown, and no reST
    ``markup`` in the help, some of which is written as docstrings."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        return super().format_help().replace("``", "")


class _Version(argparse.Action):
    """``--version``: computed when asked (it runs git), printed to stdout, exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _stages_epilog() -> str:
    from flows.stages import NAMES

    return "stages, in order:\n" + textwrap.fill(", ".join(NAMES), width=78, initial_indent="  ",
                                                  subsequent_indent="  ")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="craft", description=__doc__)
    parser.add_argument("--version", action=_Version,
                        help="print the installed version and the git commit of the current folder, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline end to end (or some stages)",
                       description="Run the DVC stages in order as a Prefect flow with MLflow tracking.",
                       epilog=_stages_epilog())
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml and params.yaml")
    p.add_argument("--stages", help="comma-separated stage names, listed below (default: all, in order)")
    p.add_argument("--force", action="store_true", help="re-run stages even if DVC sees no change")
    p.add_argument("--no-register", action="store_true", help="do not register the trained model as challenger")
    p.add_argument("--no-push", action="store_true",
                   help="do not push the outputs to the default DVC remote (dvc push runs only when one is set)")
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
    p.add_argument("--router", help="a prompt router folder, e.g. data/train_router/router: also report MODEL behind "
                                    "it (<model>_routed rows; base answers what the router keeps; evaluates base "
                                    "too); default: none, MODEL alone")
    p.add_argument("--params", default="params.yaml", help="settings from params.yaml:evaluate/model")
    p.add_argument("--json", action="store_true", help="print the results as one JSON document (logs go to stderr)")
    p.set_defaults(func=_cmd_evaluate)

    def registry_args(p, json_output: bool = False):
        p.add_argument("--workspace", default=".", help="project folder (params.yaml:promote, mlruns/)")
        p.add_argument("--name", help="registered model name (default: params.yaml:promote.model_name)")
        if json_output:
            p.add_argument("--json", action="store_true", help="print one JSON document (logs go to stderr)")

    p = sub.add_parser("register", help="register data/train_rl as the new challenger",
                       description="Log the trained model (adapter, base reference, heads, tokenizer) as an MLflow "
                                   "pyfunc with evaluation metrics and lineage tags; alias it 'challenger'.")
    registry_args(p)
    p.add_argument("--model-key", default="train_rl", help="pipeline output under data/ to register")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("promote", help="gated promotion of the challenger to champion",
                       description="Compare challenger with champion against params.yaml:promote; move the "
                                   "'champion' alias only if every rule passes (or --force with --reason). "
                                   "Exit 0 when promoted, 1 when the gate refuses.")
    registry_args(p, json_output=True)
    p.add_argument("--force", action="store_true", help="promote despite a failed gate (needs --reason)")
    p.add_argument("--reason", help="why, recorded on the version (default: none; --force needs one)")
    p.add_argument("--dry-run", action="store_true", help="run the gate and print the decision and evidence, "
                                                          "change nothing (exit 1 when it would refuse)")
    p.add_argument("--seeds", nargs="?", const="seeds", metavar="DIR",
                   help="also gate on the seed sweep in DIR (default when given without DIR: seeds/, from "
                        "`craft seeds`): seed means and intervals, stability (params.yaml:promote.min_seeds, "
                        "max_refusal_sd)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="give champion back to the previous version",
                       description="Move 'champion' back to the version the current champion replaced.")
    registry_args(p)
    p.add_argument("--reason", help="why, recorded on the demoted version (default: \"rollback\")")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("models", help="list registered versions with aliases, metrics and lineage",
                       description="Table of every version: aliases, response/reasoning ASR, over-refusal, "
                                   "utility NLL, git sha, run id, creation time.")
    registry_args(p, json_output=True)
    p.set_defaults(func=cmd_models)

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
    p.add_argument("--params", default="params.yaml", help="settings file (model, runtime and evaluate sections)")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("gold-sample", help="sample transcripts of the pipeline's models to hand-label for the gold set",
                       description="Greedy (and some sampled) completions of non-test prompts by each model, "
                                   "written unlabelled; label them following data/gold/GUIDELINES.md and append "
                                   "them to data/gold/labels.jsonl.")
    p.add_argument("--models", default="base,data/train_sft,data/train_rl_text,data/train_rl",
                   help="comma-separated models: base or pipeline output folders (the four the pipeline trains)")
    p.add_argument("--prompts", default="data/ingest/prompts.parquet", help="ingest output (only non-test prompts are used)")
    p.add_argument("--out", default="data/gold/unlabelled.jsonl", help="where to write the rows to label")
    p.add_argument("--seed", type=int, default=0, help="prompt draw and sampling seed (default 0)")
    p.add_argument("--params", default="params.yaml", help="settings file (model and runtime sections)")
    p.set_defaults(func=_cmd_gold_sample)

    add_check_parser(sub)
    add_ops_parsers(sub)
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
    from components.core.errors import quiet_library_traces

    quiet_library_traces()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure(getattr(args, "workspace", "."))
    _log_to_stderr()
    from components.core.errors import guarded

    return guarded(f"craft {args.command}", lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command. With ``--json`` whatever it (or a library) prints goes to stderr, so stdout
    carries nothing but the one document; an error still prints one line on stderr and exits 2."""
    if not getattr(args, "json", False):
        return args.func(args)
    args.stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
