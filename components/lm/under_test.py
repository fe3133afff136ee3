"""Loading a model under test: the base model, a pipeline output folder, or any HF directory.

A pipeline output folder (``data/train_rl``, ``data/train_sft``…) holds ``model.json`` naming its
base model and an ``adapter/`` (peft LoRA); it is loaded onto the base and merged for fast
generation. Any other folder with ``config.json`` is a plain HF model.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from components.core.errors import UserError
from components.lm import runtime
from components.lm import source as model_source
from components.lm.runtime import LoadedModel


def load_under_test(spec: str, model_cfg: model_source.ModelConfig, workspace: str | Path = ".") -> LoadedModel:
    """``base`` → params.yaml:model; a folder with model.json → base + adapter; else an HF dir."""
    if spec == "base":
        return runtime.load(model_source.resolve(model_cfg, workspace), model_cfg)
    folder = Path(spec)
    if (folder / "model.json").exists():
        lm, adapted = load_adapted(folder, model_cfg, workspace)
        return LoadedModel(adapted.merge_and_unload().eval(), lm.tokenizer, lm.device, lm.model_id, lm.engine)
    if (folder / "config.json").exists():
        cfg = dataclasses.replace(model_cfg, source=str(folder))
        return runtime.load(model_source.resolve(cfg, workspace), cfg)
    raise FileNotFoundError(f"{spec}: not 'base', a pipeline output folder (model.json) or an HF model directory.")


def resolve_spec(spec: str) -> str:
    """``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) → the registered pipeline folder, downloaded."""
    if not spec.startswith("models:/"):
        return spec
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    # MLflow keeps the logged folder under its source name (artifacts/train_rl/…): find the model
    # card wherever it was logged, next to the adapter it names.
    cards = sorted(p for p in local.rglob("model.json") if (p.parent / "adapter").is_dir())
    if not cards:
        raise UserError(f"{spec} is not a CRAFT registered model (no model.json beside an adapter/ folder).")
    return str(cards[0].parent)


def load_adapted(folder: Path, model_cfg: model_source.ModelConfig, workspace: str | Path = "."):
    """A pipeline output folder's base model with its adapter attached, not merged: (the loaded base,
    whose ``model_id`` names base + folder, and the peft model). ``disable_adapter()`` on the peft
    model gives the base back, as the RL stages' reference. Refuses a base whose fingerprint differs
    from the one the adapter was trained on."""
    from peft import PeftModel

    meta = json.loads((folder / "model.json").read_text())
    base_cfg = dataclasses.replace(model_cfg, source=meta["base_model_source"])
    resolved = model_source.resolve(base_cfg, workspace)
    if resolved.fingerprint != meta.get("base_model_fingerprint", resolved.fingerprint):
        raise UserError(f"{folder}: adapter was trained on base {meta['base_model_fingerprint']}, "
                        f"but {meta['base_model_source']} is now {resolved.fingerprint}; restore that base "
                        "model (model.source) or retrain the adapter with `craft run`.")
    lm = runtime.load(resolved, base_cfg)
    adapted = PeftModel.from_pretrained(lm.model, str(folder / meta.get("adapter", "adapter")))
    return dataclasses.replace(lm, model_id=f"{resolved.model_id}+{folder.name}"), adapted


def load_unmerged(spec: str, model_cfg: model_source.ModelConfig, workspace: str | Path = "."):
    """(loaded base, model) for reading rewards: ``base`` → params.yaml:model as it is; a pipeline
    output folder → its base with the adapter attached unmerged (``load_adapted``), so
    ``disable_adapter()`` gives the base. An ``init: sft`` output is refused: its adapter stacks SFT
    and RL on the raw base, while its RL stage's reference was base + SFT."""
    if spec == "base":
        lm = runtime.load(model_source.resolve(model_cfg, workspace), model_cfg)
        return lm, lm.model
    folder = Path(spec)
    if not (folder / "model.json").is_file():
        raise UserError(f"{spec}: neither 'base' nor a pipeline output folder with model.json.")
    if json.loads((folder / "model.json").read_text()).get("init") == "sft":
        raise UserError(f"{spec}: trained with train_rl.init: sft, so its RL reference was base + SFT, which this "
                        "folder cannot give back; check an init: base output or base.")
    return load_adapted(folder, model_cfg, workspace)
