"""Step ``register`` (outside DVC: it mutates the registry): log the trained model as an MLflow
pyfunc, register a new version under ``promote.model_name`` and point ``challenger`` at it.

The logged model serves anywhere MLflow does (docs/serving.md): a signature (``prompt`` in, the
columns ``predict`` returns out, the request params ``max_new_tokens``/``temperature``/``guard``
with ``ServeDefaults``), an input example, the project code it runs (its import closure) and pip
requirements derived from that code plus the base model's data wheel (``environment``). Its model
card (``model_card``) is logged as ``model_card.md`` (run and model artifact) and becomes the
version's description, and the registered model's while that is empty.

Version tags: ``eval.<metric>`` for the model's evaluation metrics (each rate with ``_lo``, ``_hi``
and ``_n``, the per-attack response ASRs, the utility NLL; ``eval.base.<metric>`` for the base model
in the same evaluation), ``eval.prompt_set`` (digest of the evaluation's prompt set, so the gate
only compares models evaluated on the same prompts), ``lineage.git_sha``, ``lineage.params_hash``,
``lineage.dvc.<stage>.<out>`` (dvc.lock hashes), ``lineage.parent_run_id`` and
``content_digest``. Registering the same model folder with the same metrics and serving defaults
again returns the existing version (a retried task never creates a duplicate). Tag values are cut at MLflow's 5000
characters. Registration holds the workspace's registry lock (``promote.registry_lock``), and every
MLflow failure is one line naming the step (``tracking.mlflow_errors``), the URI redacted.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from components.registry import environment, model_card, promote, rules
from components.registry.model_card import CardFacts
from components.registry import serving
from components.registry.serving import ServeDefaults
from components.core import tracking
from components.core.config import require
from components.core.io import dir_digest
from components.lm.source import ModelConfig
from components.data.records import stable_id


def _existing(name: str, digest: str):
    with tracking.mlflow_errors(f"look up the versions of {name!r}"):
        versions = promote.client().search_model_versions(f"name='{name}'")
    for v in versions:
        if v.tags.get("content_digest") == digest:
            return v
    return None


def run(model_dir: str | Path, metrics: dict[str, float], base_metrics: dict[str, float], lineage: dict[str, str],
        cfg: promote.PromoteConfig, model_cfg: ModelConfig, parent_run_id: str | None = None, *,
        prompt_set: str, serve: ServeDefaults = ServeDefaults(), facts: CardFacts = CardFacts(),
        router_dir: str | Path | None = None) -> str:
    """Register ``model_dir`` (a pipeline output folder) evaluated on ``prompt_set`` (the digest in
    data/evaluate/eval_set.json) and return the version number. ``serve``: what a request gets by
    default; ``facts``: what the model card reports beyond the metrics; ``router_dir``: the prompt
    router the version is served behind (``promote.routed``), or None."""
    require(bool(prompt_set), "no evaluation prompt-set digest: re-run `craft run --stages evaluate` (it writes "
            "data/evaluate/eval_set.json) before registering.")
    model_dir = Path(model_dir)
    name = cfg.model_name
    routed = () if router_dir is None else (dir_digest(Path(router_dir)),)  # unrouted digests stay as they were
    digest = stable_id(dir_digest(model_dir), json.dumps(metrics, sort_keys=True), prompt_set, serve.to_json(),
                       *routed, length=32)
    tracking.ensure_store()
    with promote.registry_lock():
        found = _existing(name, digest)
        if found is not None:
            with tracking.mlflow_errors(f"point '{promote.CHALLENGER}' at version {found.version} of {name!r}"):
                promote.client().set_registered_model_alias(name, promote.CHALLENGER, found.version)
            return str(found.version)
        card = model_card.build(name, model_dir, metrics, base_metrics, lineage, prompt_set, serve, facts)
        with tracking.mlflow_errors(f"register {model_dir} as a new version of {name!r}"):
            version, run_id = _log_and_register(model_dir, metrics, name, model_cfg, parent_run_id, serve, card,
                                                router_dir)
            _tag_and_describe(name, version, metrics, base_metrics, lineage, prompt_set, digest, run_id,
                              parent_run_id, card)
            return version


def _log_and_register(model_dir: Path, metrics: dict, name: str, model_cfg: ModelConfig,
                      parent_run_id: str | None, serve: ServeDefaults, card: str,
                      router_dir: str | Path | None = None) -> tuple[str, str]:
    """Log the pyfunc and its card in a ``register`` run and register it: (version, run id)."""
    import mlflow

    base = json.loads((model_dir / "model.json").read_text()).get("base_model_source", model_cfg.source)
    requirements = environment.pip_requirements(base)  # before the run: a missing data wheel logs nothing
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model_config.json": json.dumps(dataclasses.asdict(model_cfg)), "serving.json": serve.to_json(),
                 model_card.CARD_FILE: card}
        paths = {file.split(".")[0]: Path(tmp) / file for file in files}  # artifact key -> file
        for file, text in files.items():
            (Path(tmp) / file).write_text(text, encoding="utf-8")
        nested = mlflow.active_run() is not None  # inside the pipeline's parent run (same process)
        with mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="register", nested=nested,
                              parent_run_id=None if nested else parent_run_id,
                              tags={"craft.stage": "register"}) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"model": str(model_dir), **{k: str(v) for k, v in paths.items()},
                           **({"router": str(router_dir)} if router_dir is not None else {})},
                code_paths=[str(environment.stage_code(Path(tmp) / "code"))],
                pip_requirements=requirements,
                signature=serving.signature(serve), input_example=serving.input_example())
            mlflow.log_artifact(str(paths["model_card"]))
            mlflow.log_metrics({f"eval/{k}": v for k, v in metrics.items() if v == v})
            version = str(mlflow.register_model(info.model_uri, name).version)
    return version, run.info.run_id


def _tag_and_describe(name: str, version: str, metrics: dict, base_metrics: dict, lineage: dict, prompt_set: str,
                      digest: str, run_id: str, parent_run_id: str | None, card: str) -> None:
    """Tag the version, give it (and a registered model without one) the card, alias it challenger."""
    c = promote.client()
    tags = {**{f"eval.{k}": str(v) for k, v in metrics.items()},
            **{f"eval.base.{k}": str(v) for k, v in base_metrics.items()},
            f"eval.{promote.PROMPT_SET}": prompt_set,
            **{f"lineage.{k}": v for k, v in lineage.items()},
            "lineage.run_id": run_id, "lineage.parent_run_id": parent_run_id or "",
            "content_digest": digest}
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v[:promote.MAX_TAG])
    described = model_card.description(card)
    c.update_model_version(name, version, description=described)
    if not (c.get_registered_model(name).description or "").strip():
        c.update_registered_model(name, description=described)
    c.set_registered_model_alias(name, promote.CHALLENGER, version)


def pick_metrics(evaluation: dict, key: str) -> dict:
    """``key``'s metrics from data/evaluate/metrics.json's ``<key>/<metric>`` entries: every rate with
    ``_lo``/``_hi``/``_n``, every ``<attack>_response_asr`` and the utility NLL."""
    return {k.split("/", 1)[1]: float(v) for k, v in evaluation.items()
            if k.startswith(f"{key}/") and rules.is_eval_key(k.split("/", 1)[1])}


def metrics_for(evaluation: dict, model_key: str) -> tuple[dict, dict]:
    """(model metrics, base metrics) from data/evaluate/metrics.json (``pick_metrics``)."""
    return pick_metrics(evaluation, model_key), pick_metrics(evaluation, "base")


def adapter_digest(model_dir: str | Path) -> str:
    """Digest of a pipeline output's trained adapter; a how-to-fix error when there is none."""
    model_dir = Path(model_dir)
    adapter = model_dir / "adapter"
    require((model_dir / "model.json").is_file() and any(adapter.glob("adapter_model.*")),
            f"{model_dir} holds no trained adapter (model.json + adapter/): run `craft run` to train it "
            "before registering.")
    return dir_digest(adapter)


def require_evaluated(model_dir: str | Path, eval_set: dict, model_key: str) -> None:
    """The evaluation cited must have been produced from this very adapter (digest recorded by evaluate)."""
    recorded = (eval_set.get("adapters") or {}).get(model_key)
    here = adapter_digest(model_dir)
    require(recorded == here, f"data/evaluate was not produced from {model_dir}'s adapter "
            f"(evaluated {recorded or 'nothing'}, now {here}): re-run `craft run --stages evaluate` before registering.")


def prompt_set_digest(eval_set: dict) -> str:
    """The prompt-set digest from data/evaluate/eval_set.json's record; a how-to-fix error without one."""
    digest = str(eval_set.get("digest") or "")
    require(bool(digest), "data/evaluate/eval_set.json has no 'digest': re-run `craft run --stages evaluate` before registering.")
    return digest
