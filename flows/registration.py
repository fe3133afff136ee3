"""Registration and promotion flows (outside DVC: they change the registry, not data)."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.core import env
from components.registry import register
from components.registry import promote
from components.core.config import load_params, stage_config
from components.lm.source import model_config
from flows import lineage


@flow(name="craft-register")
def register_flow(workspace: str = ".", model_key: str = "train_rl", parent_run_id: str | None = None) -> str:
    """Register data/<model_key> with its evaluation metrics and lineage as the new challenger."""
    root = env.configure(workspace)
    params = load_params(root / "params.yaml")
    cfg = stage_config(promote.PromoteConfig, "promote", params)
    evaluation = json.loads((root / "data" / "evaluate" / "metrics.json").read_text())
    metrics, base = register.metrics_for(evaluation, model_key)
    tags = {"git_sha": lineage.git_sha(root), "params_hash": lineage.params_hash(root),
            **{k: v for k, v in lineage.lock_hashes(root).items()}}
    version = register.run(root / "data" / model_key, metrics, base, tags, cfg,
                           model_config(params), parent_run_id)
    get_run_logger().info("registered %s version %s as challenger", cfg.model_name, version)
    create_markdown_artifact(key="register", markdown=f"Registered **{cfg.model_name}** version {version} "
                             f"as `challenger`.\n\n" + "\n".join(f"- {k}: {v:.4f}" for k, v in metrics.items()))
    return version


@flow(name="craft-promote")
def promote_flow(workspace: str = ".", force: bool = False, reason: str = "") -> dict:
    """Gated promotion of the challenger (an auditable Prefect run with the gate table)."""
    root = env.configure(workspace)
    cfg = stage_config(promote.PromoteConfig, "promote", load_params(root / "params.yaml"))
    result = promote.promote(cfg, force=force, reason=reason)
    if result["checks"]:
        create_markdown_artifact(key="promotion-gate", markdown=promote.gate_table(result["checks"]))
    return result
