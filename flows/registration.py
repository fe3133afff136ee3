"""Registration and promotion flows (outside DVC: they change the registry, not data)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.core import env, tracking
from components.registry import register
from components.registry import promote, rules
from components.registry.model_card import CardFacts, source_packages, upstream_stages
from components.registry.serving import defaults_for
from components.core.config import load_params, require, stage_config
from components.lm.source import model_config
from flows import lineage


ROUTER = Path("data") / "train_router" / "router"
"""``train_router``'s output: the prompt router a ``promote.routed`` version is served behind."""


def check_registrable(root: Path, model_key: str) -> tuple:
    """Everything registration needs, checked without Prefect (``craft register`` calls it before
    the flow starts, so a user error is one line): params, the promote config, an evaluation made
    from this very adapter, and its metrics (``<model_key>_routed``'s under ``promote.routed``, which
    also needs the router). Returns (params, cfg, eval_set, evaluation, metrics, base)."""
    params = load_params(root / "params.yaml")
    cfg = stage_config(promote.PromoteConfig, "promote", params)
    eval_set = root / "data" / "evaluate" / "eval_set.json"
    metrics_file = root / "data" / "evaluate" / "metrics.json"
    require(eval_set.is_file() and metrics_file.is_file(),
            f"{eval_set.parent} has no evaluation: re-run `craft run --stages evaluate` before registering.")
    evaluated = json.loads(eval_set.read_text())
    register.require_evaluated(root / "data" / model_key, evaluated, model_key)  # weights exist and were evaluated
    register.prompt_set_digest(evaluated)
    evaluation = json.loads(metrics_file.read_text())
    key = f"{model_key}_routed" if cfg.routed else model_key
    metrics, base = register.metrics_for(evaluation, key)
    require(bool(metrics), f"{metrics_file} holds no metrics for {key!r}: evaluate it first "
                           f"(evaluate.models, and evaluate.routed_models under promote.routed, in params.yaml) "
                           "or pass the model key that was evaluated.")
    require(not cfg.routed or (root / ROUTER / "router.json").is_file(),
            f"promote.routed is set but {root / ROUTER} holds no router: run `craft run --stages train_router`.")
    return params, cfg, evaluated, evaluation, metrics, base


@flow(name="craft-register")
def register_flow(workspace: str = ".", model_key: str = "train_rl", parent_run_id: str | None = None) -> str:
    """Register data/<model_key> with its evaluation metrics and lineage as the new challenger."""
    root = env.configure(workspace)
    tracking.ensure_store()  # a tracking server that is down: one line in seconds, before any work
    params, cfg, evaluated, evaluation, metrics, base = check_registrable(root, model_key)
    prompt_set = register.prompt_set_digest(evaluated)
    tags = {"git_sha": lineage.git_sha(root), "params_hash": lineage.params_hash(root),
            **{k: v for k, v in lineage.lock_hashes(root).items()}}
    facts = dataclasses.replace(_card_facts(root, model_key, evaluated, evaluation), routed=cfg.routed)
    version = register.run(root / "data" / model_key, metrics, base, tags, cfg, model_config(params), parent_run_id,
                           prompt_set=prompt_set, serve=defaults_for(evaluated, params), facts=facts,
                           router_dir=root / ROUTER if cfg.routed else None)
    get_run_logger().info("registered %s version %s as challenger", cfg.model_name, version)
    ci = lambda k: f" [{metrics[k + '_lo']:.4f}, {metrics[k + '_hi']:.4f}]" if {k + '_lo', k + '_hi'} <= metrics.keys() else ""  # noqa: E731
    lines = [f"- {k}: {v:.4f}{ci(k)}" for k, v in metrics.items() if not k.endswith(rules.INTERVAL_PARTS)]
    create_markdown_artifact(key="register", markdown=f"Registered **{cfg.model_name}** version {version} "
                             f"as `challenger` (prompt set `{prompt_set[:12]}`).\n\n" + "\n".join(lines))
    return version


def _card_facts(root: Path, model_key: str, eval_set: dict, evaluation: dict) -> CardFacts:
    """What the model card reports beyond the metrics: the evaluation record, the guard's metrics,
    the prompt sources' packages and the DVC stages the model comes from (plus evaluate)."""
    manifest, lock = root / "data" / "sources" / "manifest.json", root / "dvc.lock"
    stages = upstream_stages(yaml.safe_load(lock.read_text()) or {}, model_key) if lock.is_file() else frozenset()
    return CardFacts(evaluation=eval_set, guard_metrics=register.pick_metrics(evaluation, f"{model_key}_guard"),
                     sources=source_packages(json.loads(manifest.read_text())) if manifest.is_file() else {},
                     stages=stages | {"evaluate"} if stages else stages)


@flow(name="craft-promote")
def promote_flow(workspace: str = ".", force: bool = False, reason: str = "") -> dict:
    """Gated promotion of the challenger (an auditable Prefect run with the gate table)."""
    root = env.configure(workspace)
    tracking.ensure_store()
    cfg = stage_config(promote.PromoteConfig, "promote", load_params(root / "params.yaml"))
    result = promote.promote(cfg, force=force, reason=reason)
    if result["checks"]:
        create_markdown_artifact(key="promotion-gate", markdown=promote.gate_table(result["checks"]))
    return result
