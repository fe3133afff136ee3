"""The operations commands of ``craft``: seeds (seed sweep), pull (DVC remote), schedule (Prefect
deployment), cache (list and prune ``.cache``): their handlers and their parsers."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def cmd_pull(args: argparse.Namespace) -> int:
    from components.core.errors import UserError
    from flows.remote import pull

    root = Path(args.workspace)
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"--workspace {root}: no dvc.yaml there; run from the project folder or pass --workspace.")
    print(pull(root, logging.getLogger("craft"), args.targets))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from flows.schedule import ScheduleConfig, serve
    from flows.stages import select

    # A bad time zone, cron expression, limit or stage name: one line, exit 2, before a server starts.
    cfg = ScheduleConfig(cron=args.cron, timezone=args.timezone, limit=args.limit, overlap=args.overlap)
    stages = args.stages.split(",") if args.stages else None
    select(stages)
    return serve(args.workspace, cfg, stages, args.name)


def cmd_seeds(args: argparse.Namespace) -> int:
    from components.sweep.seed_spread import SweepConfig, parse_seeds

    if args.report:
        from components.core.errors import UserError
        from flows.seeds import rewrite_report

        if args.seeds is not None:
            raise UserError("--report runs no experiment; drop --seeds (or drop --report to run those seeds).")

        print(rewrite_report(args.workspace, SweepConfig(scope=args.scope).scope, args.baseline))
        return 0
    if args.baseline is not None:
        from components.core.errors import UserError

        raise UserError("--baseline names the commit whose experiments --report reads; a sweep always runs from the "
                        "last commit: drop --baseline, or add --report.")
    cfg = SweepConfig(parse_seeds(args.seeds or "1,2"), args.scope)  # a bad list: one line, exit 2, before Prefect loads
    from flows.pipeline import StageFailed, WorkspaceBusy, workspace_lock
    from flows.seeds import OUT, require_committed, require_new_seeds, seed_sweep

    require_committed(Path(args.workspace))  # before the flow starts: one line, exit 2
    require_new_seeds(Path(args.workspace), cfg)
    with workspace_lock(Path(args.workspace).resolve()):  # a run or sweep in progress: refused at once
        pass
    try:
        seed_sweep(list(cfg.seeds), workspace=args.workspace, scope=cfg.scope)
    except (StageFailed, WorkspaceBusy) as exc:
        print(f"\ncraft seeds: {exc}", file=sys.stderr)
        return exc.exit_code
    print((Path(args.workspace) / OUT / "spread.md").read_text())
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from components.core.errors import UserError
    from components.upkeep import cache
    from flows.cli_json import emit_json

    cfg = cache.PruneConfig(args.older_than, args.keep)  # a bad value: one line, exit 2
    ws = Path(args.workspace)
    if not (ws / "dvc.yaml").is_file():  # a typo must not "prune nothing" and exit 0
        raise UserError(f"--workspace {ws}: no dvc.yaml there; run from the project folder or pass --workspace.")
    root = ws / ".cache"

    def survey():
        entries, now = cache.scan(root), time.time()
        return entries, now, cache.to_prune(entries, cfg, now)

    done = cache.Removed(0, [])
    if args.prune:
        from flows.pipeline import workspace_lock

        with workspace_lock(ws.resolve()):  # never under a running `craft run` or sweep
            entries, now, doomed = survey()
            done = cache.remove(doomed, root)
    else:
        entries, now, doomed = survey()
    if args.json:
        gone = {e.path for e in doomed}
        emit_json(args, {"cache": str(root), "pruned": bool(args.prune), "freed_bytes": done.freed,
                         "failed": done.failed, "older_than_days": cfg.older_than_days, "keep": cfg.keep,
                         "entries": [{"kind": e.kind, "stage": e.stage, "key": e.key, "path": str(e.path),
                                      "bytes": e.size, "written": e.written, "last_step": e.last_step,
                                      "unreadable": e.unreadable or None, "prune": e.path in gone}
                                     for e in entries]})
    else:
        print(cache.table(entries, doomed, now, cache.leftovers(root)))
        if args.prune:
            print(f"removed {len(doomed) - len(done.failed)} entries, freed {cache.human(done.freed)}.")
        elif doomed:
            print("nothing removed: add --prune to remove the entries marked yes.")
    for line in done.failed:
        print(f"craft cache: could not delete {line}", file=sys.stderr)
    return 1 if done.failed else 0


def add_ops_parsers(sub) -> None:
    """Add ``seeds``, ``pull``, ``schedule`` and ``cache`` to the ``craft`` subparsers ``sub``."""
    p = sub.add_parser("seeds", help="re-run the RL stages (or the pipeline) under other seeds and report the spread",
                       description="One DVC experiment per seed (dvc exp run --temp, the held-out split fixed), then "
                                   "mean, sd, 95% interval and range of the headline results beside the committed "
                                   "run: seeds/spread.md, seeds/spread.json and seeds/sweep.json. --scope rl "
                                   "reseeds train_rl and train_rl_text only (curation, head and SFT fixed); "
                                   "--scope all reseeds every training stage.")
    p.add_argument("--seeds", help="comma-separated seeds (default 1,2; on 2 CPU cores about 35 min each "
                                                  "with --scope rl, about 40, a full run, with --scope all)")
    p.add_argument("--scope", default="rl", choices=["rl", "all"],
                   help="which stages get the seed: rl (train_rl, train_rl_text) or all training stages")
    p.add_argument("--report", action="store_true",
                   help="run no experiment: write seeds/ anew from experiments already in the "
                        "repository (after an interrupted sweep, or to add what a newer version reports)")
    p.add_argument("--baseline", metavar="REV",
                   help="with --report: the commit whose experiments to read (default: the last commit, or the "
                        "sweep seeds/sweep.json records when the last commit has none and changed no output since)")
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml and params.yaml")
    p.set_defaults(func=cmd_seeds)

    p = sub.add_parser("pull", help="fetch a pushed run's outputs from the default DVC remote",
                       description="dvc pull the outputs of every stage dvc.lock records (or the given stages "
                                   "or paths), so that dvc repro recomputes nothing (docs/data-steward.md).")
    p.add_argument("targets", nargs="*", help="stages or paths (default: every stage dvc.lock records)")
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("schedule", help="serve the pipeline on a cron schedule (Prefect deployment)",
                       description="Serve the craft-pipeline flow as a Prefect deployment with a cron schedule "
                                   "read in --timezone (default UTC). At most --limit runs at once; a run due "
                                   "meanwhile is queued or skipped (--overlap), never refused by the workspace "
                                   "lock. Uses PREFECT_API_URL when set; otherwise starts a local Prefect server "
                                   "on 127.0.0.1. Runs until interrupted. To run on a work pool instead, see "
                                   "prefect.yaml and docs/deployment.md.")
    p.add_argument("--cron", required=True, help='cron expression read in --timezone, e.g. "0 3 * * 0" '
                                                 "(Sundays 03:00)")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of --cron, e.g. Europe/Berlin; daylight-saving "
                                                     "shifts follow it (default: UTC, not this machine's zone)")
    p.add_argument("--limit", type=int, default=1, help="most runs of the deployment at once (default 1: a "
                                                        "second run of one workspace fails on its lock)")
    p.add_argument("--overlap", choices=["queue", "skip"], default="queue",
                   help="a run due while --limit runs are active: queue it until one ends, or skip it (default queue)")
    p.add_argument("--workspace", default=".", help="project folder the scheduled runs use")
    p.add_argument("--stages", help="comma-separated stages (default: all)")
    p.add_argument("--name", default="craft-retrain", help="deployment name")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("cache", help="list the RL checkpoints, start adapters and evaluation generations kept in "
                                     ".cache, and prune old ones",
                       description="RL checkpoints (.cache/checkpoints), start adapters (.cache/gates) and each "
                                   "evaluated model's completions (.cache/evaluations) are kept "
                                   "per key of settings, data, model and code, outside DVC, and no stage removes "
                                   "them: a pipeline run on new inputs adds about 55 MB for SmolLM2 (CRAFT and its "
                                   "ablation checkpoint into the one folder train_rl; evaluation about 0.1 MB a "
                                   "model). Without --prune this lists "
                                   "them and marks what a prune would remove. A prune keeps the --keep newest of "
                                   "each folder and removes the rest last written more than --older-than days "
                                   "ago; a start adapter counts from when it was computed, however often read "
                                   "since. Converted base models (.cache/models) are listed, never removed. A "
                                   "removed entry only costs time: a run that needs it trains or decodes again.")
    p.add_argument("--prune", action="store_true",
                   help="remove the marked entries; refused while `craft run`, `craft seeds` or a scheduled run "
                        "holds the workspace, but a stage started by hand (dvc repro, python -m) holds no lock: "
                        "keep --older-than longer than any such run")
    p.add_argument("--older-than", type=float, default=30.0, metavar="DAYS",
                   help="prune entries last written longer ago than this")
    p.add_argument("--keep", type=int, default=2, metavar="N",
                   help="newest entries of each folder kept whatever their age")
    p.add_argument("--json", action="store_true", help="print one JSON document (logs go to stderr)")
    p.add_argument("--workspace", default=".", help="project folder holding dvc.yaml and .cache")
    p.set_defaults(func=cmd_cache)
