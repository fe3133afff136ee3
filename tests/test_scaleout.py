"""Scale-out with ``accelerate launch``: shards, the launch check, and 2 processes = 1 process.

The slow test launches the real stage modules with 2 CPU processes (gloo) and compares them with
one process on the same global batch. RL rolls out greedily with PPO advantages there: sampled
rollouts differ by construction (each process draws its own samples), greedy ones do not, so the
adapters must agree to float rounding (batches padded per process instead of globally).
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.core import dist
from tests.factories import good_frame

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
"""Max |Δ| allowed between the 1- and 2-process adapters (measured: 7.1e-7, weights up to 0.19)."""
RL = {"advantage": "ppo", "temperature": 0.0, "group_size": 1, "prompts_per_step": 4, "minibatch_size": 3,
      "grad_accum": 1, "steps": 3, "max_new_tokens": 6, "ppo_epochs": 1, "judge": "keyword", "benign_per_step": 1,
      "select_harmful": 1, "select_benign": 1, "select_judge": "keyword",
      "checkpoint_every": 1, "log_every": 3, "lora_r": 2, "lora_alpha": 4, "lr": 0.005,
      "opening_coef": 1.0, "opening_prompts": 1, "gate_steps": 1, "gate_prompts": 1,
      "benign_candidates": 2}
"""4 harmful + 1 benign prompts: rows 3 + 2 per process; minibatches of 3 straddle the processes; 2
optimizer steps per RL step. One opening prompt: under 2 processes the second holds none of it and
still joins the opening term's sums. One gate step on one benign and one harmful prompt: one each.
Two benign candidates a step: each process scores one, and both pick the same."""


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_shards_are_disjoint_and_cover_in_rank_order(n):
    for world in (1, 2, 3):
        bounds = [dist.shard_bounds(n, r, world) for r in range(world)]
        assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_prompt_shards_keep_groups_whole_and_rows_map_back():
    from components.rl.draws import shard_prompts, step_prompts

    pool = [f"p{i}" for i in range(9)]
    prompts = step_prompts(pool, 5, seed=0, step=3)
    shares = [shard_prompts(prompts, 4, r, 2) for r in range(2)]
    assert shares[0][0] + shares[1][0] == prompts  # disjoint, together the one-process batch
    (_, a), (_, b) = shares
    assert (a.start, a.size, b.start, b.size, a.total) == (0, 12, 12, 8, 20)  # whole groups of 4
    perm = torch.tensor([13, 2, 19, 11, 12])
    assert a.local(perm).tolist() == [2, 11] and b.local(perm).tolist() == [1, 7, 0]  # perm order kept


def test_step_prompts_walk_an_epoch_wise_permutation():
    """Draw i = step·n + j is position i mod |pool| of epoch i div |pool|'s shuffle of the sorted pool."""
    import random

    from components.rl.draws import step_prompts

    pool = [f"p{i}" for i in range(9)]
    perm = sorted(pool)
    random.Random("7:harmful:0").shuffle(perm)
    assert step_prompts(pool[::-1], 4, 7, 1) == perm[4:8]  # pool order does not matter


def test_accelerate_cpu_with_several_processes_is_refused():
    """``accelerate launch --cpu --num_processes 2`` starts one process: refuse, say what works."""
    asked = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(dist.LaunchError, match="--multi_gpu --num_processes N"):
        dist.check_launch(asked)
    dist.check_launch({"ACCELERATE_USE_CPU": "True"})  # --num_processes 1
    dist.check_launch({**asked, "WORLD_SIZE": "2"})  # a launcher that did start them
    dist.check_launch({})  # plain python -m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(ws: Path, processes: int, module: str, *args: str) -> None:
    """``accelerate launch`` of a stage module in ``ws`` (CPU processes, own MLflow store)."""
    how = ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(_free_port())] \
        if processes > 1 else ["--cpu", "--num_processes", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *how, "-m", module, *args],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _runs(ws: Path) -> list[tuple[str, str, int]]:
    """(run name, status, number of rl/reward points) of every MLflow run in the workspace's store."""
    with sqlite3.connect(ws / "mlruns" / "mlflow.db") as db:
        return db.execute("SELECT r.name, r.status, (SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = r.run_uuid "
                          "AND m.key = 'rl/reward') FROM runs r ORDER BY r.start_time").fetchall()


def _workspace(root: Path, tiny_model_dir: Path) -> Path:
    from components.head.model import SafetyHead

    root.mkdir(parents=True)
    torch.manual_seed(0)
    SafetyHead(32, 16, 8).save(root / "head")
    pd.DataFrame({"prompt": [f"Harm {i}?" for i in range(8)] + ["Bake bread?", "Fold a shirt?", "Explain rain."],
                  "prompt_kind": ["harmful"] * 8 + ["benign"] * 3,
                  "split": ["train"] * 6 + ["val"] * 2 + ["train", "train", "val"]}).to_parquet(root / "prompts.parquet")
    good_frame(6).to_parquet(root / "traces.parquet")  # 18 rows: 5 batches of 4, 3 shards of 8
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "dtype": "float32"}, "runtime": {"device": "cpu", "threads": 1},
        "train_rl": RL, "extract": {"batch_size": 4, "shard_rows": 8}}))
    return root


def _rl_outputs_complete(ws: Path) -> dict[str, torch.Tensor]:
    out = ws / "out"
    for name in ("adapter/adapter_config.json", "head/head.json", "model.json", "curves.png", "summary.md"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "history.json").read_text())) == RL["steps"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == RL["steps"]
    ckpts = sorted((ws / ".cache" / "checkpoints" / "train_rl").glob("*/step-*"))
    assert [p.name for p in ckpts] == ["step-000001", "step-000002"], ckpts  # one writer: no .partial left, pruned to 2
    assert not list(ws.glob("out*.partial"))
    assert (ckpts[-1].parent / "best" / "best.json").is_file()  # the selected adapter, kept for resumes
    # the trained adapter (the output one is the selected one: on a random model, often the untrained)
    return load_file(str(ckpts[-1] / "adapter.safetensors"))


@pytest.mark.slow
def test_two_processes_write_once_and_match_one(tmp_path, tiny_model_dir):
    one, two = _workspace(tmp_path / "one", tiny_model_dir), _workspace(tmp_path / "two", tiny_model_dir)
    rl = ("--prompts", "prompts.parquet", "--head", "head", "--out", "out")
    _launch(one, 1, "components.train_rl", *rl)
    _launch(two, 2, "components.train_rl", *rl)
    assert _runs(one) == _runs(two) == [("train_rl", "FINISHED", RL["steps"])]  # one run, each step logged once
    a, b = _rl_outputs_complete(one), _rl_outputs_complete(two)
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= TOLERANCE
    selected = [json.loads((ws / "out" / "metrics.json").read_text())["selected_step"] for ws in (one, two)]
    assert selected[0] == selected[1]  # only the main process selects, on the same adapters

    from components.extract import ExtractConfig, run as extract
    from components.lm.source import ModelConfig

    extract(ExtractConfig(batch_size=4, shard_rows=8), ModelConfig(source=str(tiny_model_dir), dtype="float32",
            device="cpu", threads=1), pd.read_parquet(one / "traces.parquet"), one / "extract")
    _launch(two, 2, "components.extract", "--data", "traces.parquet", "--out", "extract")
    assert [r[:2] for r in _runs(two)] == [("train_rl", "FINISHED"), ("extract", "FINISHED")]
    manifest = json.loads((two / "extract" / "manifest.json").read_text())
    assert manifest == json.loads((one / "extract" / "manifest.json").read_text()) and len(manifest["shards"]) == 3
    for name in manifest["shards"] + ["rows.parquet"]:  # same batches, same order: the same bytes
        assert (two / "extract" / name).read_bytes() == (one / "extract" / name).read_bytes(), name
    assert (two / "extract" / "metrics.json").is_file() and (two / "extract" / "summary.md").is_file()
