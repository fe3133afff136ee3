"""Crash-safe training checkpoints: LoRA adapter, optimizer, RNG, step; resumable bit-for-bit on CPU.

Layout: ``<dir>/step-000010/{adapter.safetensors, state.pt, done}``, and ``<dir>/best/{adapter.safetensors,
best.json}``: the best-scoring adapter so far (validation-based selection, ``save_best``). A checkpoint is
written to a ``.partial`` folder and renamed only when complete (``done`` marker inside), so a kill
mid-write leaves the previous checkpoint intact. ``state.pt`` holds only tensors and plain Python values and
is read with ``torch.load(weights_only=True)``; adapter weights are safetensors.

An RL run's checkpoint (``save_step`` / ``resume``) also holds the value head, the LR schedule and
the weight average (``step_modules``), and every process's RNG state: call ``save_step`` on every
process, the main one writes.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.core import dist

log = logging.getLogger("craft.train_rl")


def trainable(model) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name (the LoRA A and B matrices; the RL value head is apart)."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in trainable(model).items()}


def save(folder: Path, step: int, model, optimizer, extra_modules: dict | None = None, keep: int = 2,
         rank_rng: list[torch.Tensor] | None = None) -> Path:
    """``rank_rng``: each process's torch RNG state, in rank order, for a run of several processes
    (their RNGs part where they draw different amounts, e.g. dropout on shards of different size)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = folder / f"step-{step:06d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp, model)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "modules": {k: m.state_dict() for k, m in (extra_modules or {}).items()},
    }
    if rank_rng is not None:
        state["rank_torch_rng"] = rank_rng
    torch.save(state, tmp / "state.pt")
    (tmp / "done").write_text(str(step))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-??????"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = [p for p in sorted(folder.glob("step-??????")) if (p / "done").exists()] if folder.exists() else []
    return done[-1] if done else None


WEIGHTS = "adapter.safetensors"


def save_weights(path: Path, model) -> None:
    """Write ``model``'s trainable weights as ``path/adapter.safetensors`` (``load_weights`` reads them)."""
    save_file(_trainable_state(model), str(path / WEIGHTS))


def load_weights(path: Path, model) -> None:
    """Copy the trainable weights saved in ``path/adapter.safetensors`` into ``model``."""
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = set(weights) - set(params)
    if missing:
        raise ValueError(f"{path}: checkpoint has parameters the model lacks: {sorted(missing)[:3]}…")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)


def restore(path: Path, model, optimizer, extra_modules: dict | None = None, rank: int = 0) -> int:
    """Load a checkpoint into model/optimizer/modules and the RNGs (``rank``'s torch RNG when the
    checkpoint holds one per process); returns the next step."""
    load_weights(path, model)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    for k, m in (extra_modules or {}).items():
        m.load_state_dict(state["modules"][k])
    torch.set_rng_state(state["rank_torch_rng"][rank] if "rank_torch_rng" in state else state["torch_rng"])
    random.setstate(_as_rng_state(state["python_rng"]))
    return int(state["step"]) + 1


def _as_rng_state(s):
    """random.setstate needs tuples; weights_only loading may hand back lists."""
    return (s[0], tuple(s[1]), s[2])


def save_best(folder: Path, model, info: dict) -> Path:
    """Write ``model``'s trainable weights and ``info`` (JSON: step, score, …) as ``<folder>/best``,
    replacing the previous best atomically (written to ``best.partial``, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / "best", folder / "best.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp, model)
    (tmp / "best.json").write_text(json.dumps(info, sort_keys=True))
    old = folder / "best.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def best_info(folder: Path) -> dict | None:
    """The saved best's ``info``, or None when there is none yet (``best.old``: a kill between the
    two renames of ``save_best``)."""
    for name in ("best", "best.old"):
        path = folder / name / "best.json"
        if path.exists():
            return json.loads(path.read_text())
    return None


def load_best(folder: Path, model) -> dict:
    """Load the saved best weights into ``model``; returns its ``info``."""
    for name in ("best", "best.old"):
        if (folder / name / "best.json").exists():
            load_weights(folder / name, model)
            return json.loads((folder / name / "best.json").read_text())
    raise FileNotFoundError(f"{folder}: no best adapter saved")


def step_modules(value_head, schedule=None, average=None) -> dict:
    """What a checkpoint holds beside adapter and optimizer: the value head, the LR schedule and the
    weight average (``train_rl.ema_decay``)."""
    return {"value_head": value_head, **({"lr_schedule": schedule} if schedule is not None else {}),
            **({"weight_average": average} if average is not None else {})}


def save_step(folder, step: int, policy, opt, value_head, main: bool, schedule=None, average=None) -> None:
    """Every process hands its RNG state to the main one, which alone writes the checkpoint
    (adapter, optimizer, value head, LR schedule and weight average are the same on every process).
    Call on every process."""
    rngs = dist.gather(torch.get_rng_state())
    if main:
        save(folder, step, policy, opt, step_modules(value_head, schedule, average),
             rank_rng=rngs if len(rngs) > 1 else None)


def resume(folder, policy, opt, value_head, schedule=None, average=None) -> int:
    """Resume from the newest complete checkpoint in ``folder``; 0 when starting fresh."""
    last = latest(folder)
    if last is None:
        return 0
    start = restore(last, policy, opt, step_modules(value_head, schedule, average), rank=dist.rank())
    log.info("resuming from %s (next step %d)", last, start)
    return start
