"""The registry commands of ``craft``: register, promote, rollback, models (MLflow registry)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.cli_json import emit_json


def _promote_cfg(args):
    from components.core.config import load_params, stage_config
    from components.registry.promote import PromoteConfig

    params = load_params(Path(args.workspace) / "params.yaml") if (Path(args.workspace) / "params.yaml").exists() else {}
    cfg = stage_config(PromoteConfig, "promote", params)
    return cfg if not getattr(args, "name", None) else PromoteConfig(**{**cfg.__dict__, "model_name": args.name})


def registry_ready() -> None:
    """Before any command that talks to MLflow: cut MLflow's HTTP retries short (seconds, not
    minutes) and check a tracking server answers, so a down server is one line, exit 2, in seconds."""
    from components.core.tracking import ensure_store, fail_fast_http

    fail_fast_http()
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # retry chatter; the error says it all
    ensure_store()


def cmd_register(args: argparse.Namespace) -> int:
    registry_ready()  # before Prefect starts
    from flows.registration import check_registrable, register_flow

    check_registrable(Path(args.workspace).resolve(), args.model_key)  # a user error: one line, before Prefect

    version = register_flow(workspace=args.workspace, model_key=args.model_key)
    print(f"registered version {version} as challenger")
    return 0


def _promote_decision(result: dict) -> str:
    """``promote``, ``force`` (over a failed gate) or ``none`` (the challenger already is champion)."""
    return "none" if result.get("note") else "force" if result["forced"] else "promote"


def _promote_message(result: dict) -> str:
    if result.get("note"):
        return result["note"]
    previous = result["previous"] or "none"
    if not result["dry_run"]:
        return f"version {result['version']} is now champion (previous: {previous})"
    how = " by --force, over the failed gate" if result["forced"] else ""
    return (f"dry run: version {result['version']} would become champion{how} (previous: {previous}); "
            "nothing changed in the registry.")


def cmd_promote(args: argparse.Namespace) -> int:
    from components.registry.promote import PromotionRefused, gate_table, promote

    registry_ready()
    cfg = _promote_cfg(args)
    doc = {"model": cfg.model_name, "dry_run": args.dry_run}
    try:
        seeds = None if args.seeds is None else Path(args.workspace) / args.seeds
        result = promote(cfg, force=args.force, reason=args.reason or "", dry_run=args.dry_run, seeds=seeds)
    except PromotionRefused as exc:
        if args.json:
            emit_json(args, {**doc, "decision": "refuse", "changed": False, "message": str(exc).split("\n")[0],
                              "checks": exc.checks})
        print(f"craft promote: REFUSED{' (dry run)' if args.dry_run else ''}. {exc}", file=sys.stderr)
        print("Nothing changed in the registry. Use --force --reason '…' to override.", file=sys.stderr)
        return 1
    if args.json:
        emit_json(args, {**doc, "decision": _promote_decision(result), "changed": result["promoted"],
                          "version": result["version"], "previous": result.get("previous"),
                          "message": _promote_message(result), "checks": result["checks"]})
        return 0
    if result["checks"]:
        print(gate_table(result["checks"]))
    print(_promote_message(result))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from components.registry.promote import rollback

    registry_ready()
    result = rollback(_promote_cfg(args), reason=args.reason or "")
    print(f"champion is version {result['champion']} again (version {result['demoted']} demoted)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from components.registry.promote import list_versions, version_records

    cfg = _promote_cfg(args)
    registry_ready()
    if args.json:
        emit_json(args, {"model": cfg.model_name, "versions": version_records(cfg.model_name)})
        return 0
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
