"""Saving a LoRA adapter so that the same weights give the same files on any machine.

peft writes ``target_modules`` in the order of a Python set (it changes with the process's hash
seed) and ``base_model_name_or_path`` as the absolute path the base was loaded from (it changes
with the workspace's location), in the config and in its README. Both end up in the adapter
folder's DVC hash and in the adapter digest registration checks, so equal weights would look like
different models. The loader (``PeftModel.from_pretrained(base, folder)``,
components/lm/under_test.py) reads neither: the pipeline's model.json names the base.
"""
from __future__ import annotations

import json
from pathlib import Path

from components.core.io import write_text

CONFIG = "adapter_config.json"


def save_adapter(model, tokenizer, folder: str | Path, base_id: str) -> Path:
    """``save_pretrained`` the adapter and tokenizer into ``folder``, then make its files stable."""
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    config = folder / CONFIG
    body = json.loads(config.read_text(encoding="utf-8"))
    machine_path = str(body.get("base_model_name_or_path") or "")
    if isinstance(body.get("target_modules"), list):
        body["target_modules"] = sorted(body["target_modules"])
    body["base_model_name_or_path"] = base_id
    write_text(config, json.dumps(body, indent=2, sort_keys=True) + "\n")
    readme = folder / "README.md"
    if machine_path and readme.exists():
        write_text(readme, readme.read_text(encoding="utf-8").replace(machine_path, base_id))
    return folder
