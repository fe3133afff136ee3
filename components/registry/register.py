"""Step ``register`` (outside DVC: it mutates the registry): log the trained model as an MLflow
pyfunc, register a new version under ``promote.model_name`` and point ``challenger`` at it.

Version tags: ``eval.<metric>`` for the model's evaluation metrics (and ``eval.base.<metric>`` for
the base model in the same evaluation), ``lineage.git_sha``, ``lineage.params_hash``,
``lineage.dvc.<stage>.<out>`` (dvc.lock hashes), ``lineage.parent_run_id`` and
``content_digest``. Registering the same model folder with the same metrics again returns the
existing version (a retried task never creates a duplicate).
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from components.registry import promote
from components.core.io import dir_digest
from components.lm.source import ModelConfig
from components.data.records import stable_id

PIP_REQUIREMENTS = ("torch==2.13.0", "transformers==5.23.0", "peft==0.21.0", "mlflow==3.17.2",
                    "safetensors", "pandas", "accelerate", "gguf", "tokenizers")


def _existing(name: str, digest: str):
    for v in promote.client().search_model_versions(f"name='{name}'"):
        if v.tags.get("content_digest") == digest:
            return v
    return None


def run(model_dir: str | Path, metrics: dict[str, float], base_metrics: dict[str, float], lineage: dict[str, str],
        cfg: promote.PromoteConfig, model_cfg: ModelConfig, parent_run_id: str | None = None) -> str:
    """Register ``model_dir`` (a pipeline output folder) and return the version number."""
    import mlflow

    from components.core import tracking

    model_dir = Path(model_dir)
    name = cfg.model_name
    digest = stable_id(dir_digest(model_dir), json.dumps(metrics, sort_keys=True), length=32)
    found = _existing(name, digest)
    if found is not None:
        promote.client().set_registered_model_alias(name, promote.CHALLENGER, found.version)
        return str(found.version)
    tracking.ensure_store()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "model_config.json"
        cfg_path.write_text(json.dumps(dataclasses.asdict(model_cfg)))
        nested = mlflow.active_run() is not None  # inside the pipeline's parent run (same process)
        with mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="register", nested=nested,
                              parent_run_id=None if nested else parent_run_id,
                              tags={"craft.stage": "register"}) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"model": str(model_dir), "model_config": str(cfg_path)},
                code_paths=[str(Path(__file__).parents[1])], pip_requirements=list(PIP_REQUIREMENTS))
            mlflow.log_metrics({f"eval/{k}": v for k, v in metrics.items() if v == v})
            version = str(mlflow.register_model(info.model_uri, name).version)
    c = promote.client()
    tags = {**{f"eval.{k}": str(v) for k, v in metrics.items()},
            **{f"eval.base.{k}": str(v) for k, v in base_metrics.items()},
            **{f"lineage.{k}": v for k, v in lineage.items()},
            "lineage.run_id": run.info.run_id, "lineage.parent_run_id": parent_run_id or "",
            "content_digest": digest}
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v[:5000])
    c.set_registered_model_alias(name, promote.CHALLENGER, version)
    return version


def metrics_for(evaluation: dict, model_key: str) -> tuple[dict, dict]:
    """(model metrics, base metrics) from data/evaluate/metrics.json's ``<model>/<metric>`` keys."""
    pick = lambda key: {k.split("/", 1)[1]: float(v) for k, v in evaluation.items()  # noqa: E731
                        if k.startswith(f"{key}/") and k.split("/", 1)[1] in promote.EVAL_KEYS}
    return pick(model_key), pick("base")
