"""Stage ``train_rl``: RL with latent rewards (CRAFT §4.2) on torch + peft, our own loop.

Per step: sample ``prompts_per_step`` harmful training prompts (a function of seed and step, so a
resumed run sees the same prompts), roll out ``group_size`` completions each from the policy,
score them with ``CraftReward``, compute advantages, and run ``ppo_epochs`` passes of the clipped
surrogate over minibatches with gradient accumulation.

- ``advantage: grpo`` (paper): A = (R − mean_group)/(std_group + 1e-6) for every token; KL to the
  reference as a loss term, k3 estimator, coefficient ``kl_coef``.
- ``advantage: ppo``: a value head on the policy's last hidden state, per-token rewards (sequence
  reward on the last token, minus ``kl_coef``·(log π − log π_ref) per token when ``kl_in: reward``),
  GAE(γ, λ), value loss weighted by ``vf_coef``.
The reference policy is the model with the LoRA adapter disabled. ``accelerate`` places model and
optimizer; under ``accelerate launch --multi_gpu --num_processes N`` each process rolls out, scores
and back-propagates its share of every step's prompts, gradients are summed across processes
before each optimizer step (``components.rl.loop``), and only the main process opens the MLflow
run and writes checkpoints and outputs. Departures from the paper: LoRA instead of full
fine-tuning; fewer, larger steps.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from components.rl import checkpoint
from components.lm import generation
from components.lm.adapters import save_adapter
from components.lm import source
from components.lm import runtime
from components.rl import loop as rl_loop
from components.core import dist
from components.core import stage_cli
from components.core import tracking
from components.core.code import closure_digest
from components.core.config import require, stage_config
from components.head.model import SafetyHead
from components.core.io import dir_digest, read_table, write_json, write_text
from components.eval.judges import SAFE_AT, judge_completions, make_judge, valid_reward_judge
from components.rl.policy import LoraSpec, wrap_lora
from components.data.records import stable_id
from components.rl.rewards import SOURCES, CraftReward, RewardWeights

log = logging.getLogger("craft.train_rl")
STAGE = "train_rl"


@dataclass(frozen=True)
class TrainRLConfig:
    """params.yaml:train_rl."""

    advantage: str = "grpo"
    """grpo (group baseline, paper) | ppo (value head + GAE)."""
    steps: int = 16
    """RL steps (rollout + update) to run; >= 1."""
    prompts_per_step: int = 4
    """Harmful training prompts sampled per step; >= 1."""
    group_size: int = 4
    """Completions per prompt (paper: 8); >= 2 for grpo."""
    max_new_tokens: int = 32
    """Token budget of each rollout completion."""
    temperature: float = 0.6
    """Rollout sampling temperature (paper: 0.6)."""
    top_p: float = 1.0
    """Rollout nucleus-sampling probability mass in (0, 1]; 1.0 turns it off."""
    lr: float = 5e-4
    """AdamW learning rate of the LoRA weights; > 0 (the paper's 1e-6 is for full fine-tuning)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts; >= 1 (1 with grad_accum covering the batch: one update per step)."""
    minibatch_size: int = 8
    """Rollouts per forward / backward pass; >= 1."""
    grad_accum: int = 2
    """Minibatches whose gradients are summed into one optimizer step; >= 1."""
    clip: float = 0.2
    """PPO ratio clip ε; in (0, 1)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference policy; >= 0 (paper: 0.01)."""
    kl_in: str = "loss"
    """loss (GRPO style, k3) | reward (PPO-RLHF style per-token penalty)."""
    gamma: float = 1.0
    """GAE discount γ (ppo only)."""
    lam: float = 0.95
    """GAE λ (ppo only)."""
    vf_coef: float = 0.1
    """Weight of the value loss (ppo only)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip applied before each optimizer step."""
    w_lat: float = 0.5
    """Weight of the latent reward: R = w_lat·R_lat + w_txt·R_txt + w_cons·R_cons (paper)."""
    w_txt: float = 0.4
    """Weight of the text-judge reward R_txt = 2·p_safe_text − 1."""
    w_cons: float = 0.2
    """Weight of the consistency reward R_cons = 1 − |p_safe_latent − p_safe_text|."""
    reward_source: str = "policy"
    """policy (live hidden states, paper) | reference (frozen model re-encodes the text)."""
    judge: str = "ensemble"
    """The reward's text judge (keyword | embedding | ensemble | hf:<path>); never the held-out
    evaluation judge, which grades what this stage trains."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scale α (the update is scaled by α / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input, in [0, 1)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the modules that get LoRA adapters."""
    include_benign: bool = False
    """Also train on benign prompts (their text reward would favour refusals: off by default)."""
    probe_prompts: int = 8
    """Fixed harmful val prompts whose greedy refusal rate is logged every ``log_every`` steps."""
    log_every: int = 4
    """Steps between probe evaluations; >= 1."""
    checkpoint_every: int = 4
    """Steps between resumable checkpoints; >= 1."""
    kl_stop: float = 1.0
    """Guard: end training early (and keep the last good state) when mean KL exceeds this."""
    seed: int = 0
    """Seed of prompt sampling, rollouts and the LoRA initialisation."""

    def __post_init__(self) -> None:
        require(self.advantage in ("grpo", "ppo"), f"train_rl.advantage={self.advantage!r}: use grpo or ppo.")
        require(self.kl_in in ("loss", "reward"), f"train_rl.kl_in={self.kl_in!r}: use loss or reward.")
        require(self.reward_source in SOURCES,
                f"train_rl.reward_source={self.reward_source!r}: use one of {SOURCES}.")
        require(self.steps >= 1, f"train_rl.steps={self.steps!r}: use 1 or more, e.g. 16.")
        require(self.prompts_per_step >= 1,
                f"train_rl.prompts_per_step={self.prompts_per_step!r}: use 1 or more, e.g. 4.")
        require(self.group_size >= 2 or self.advantage == "ppo",
                f"train_rl.group_size={self.group_size!r}: use 2 or more with advantage grpo "
                "(the baseline is the group), e.g. 4, or set advantage: ppo.")
        require(self.minibatch_size >= 1, f"train_rl.minibatch_size={self.minibatch_size!r}: use 1 or more, e.g. 8.")
        require(self.grad_accum >= 1, f"train_rl.grad_accum={self.grad_accum!r}: use 1 or more, e.g. 2.")
        require(self.ppo_epochs >= 1, f"train_rl.ppo_epochs={self.ppo_epochs!r}: use 1 or more, e.g. 1.")
        require(0 < self.clip < 1, f"train_rl.clip={self.clip!r}: use a value in (0, 1), e.g. 0.2.")
        require(self.kl_coef >= 0, f"train_rl.kl_coef={self.kl_coef!r}: use 0 (no KL term) or more, e.g. 0.05.")
        require(self.lr > 0, f"train_rl.lr={self.lr!r}: use a positive learning rate, e.g. 0.0005.")
        require(self.log_every >= 1, f"train_rl.log_every={self.log_every!r}: use 1 or more, e.g. 4.")
        require(self.checkpoint_every >= 1,
                f"train_rl.checkpoint_every={self.checkpoint_every!r}: use 1 or more, e.g. 4.")
        require(valid_reward_judge(self.judge),
                f"train_rl.judge={self.judge!r}: use keyword, embedding, ensemble or hf:<path> "
                "(the held-out judge only grades).")

    @property
    def lora(self) -> LoraSpec:
        return LoraSpec(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets)



def probe_refusal_rate(policy, tokenizer, judge, prompts: list[str], max_new_tokens: int, device,
                       engine: str = "ours") -> float:
    """Share of probe prompts whose greedy completion the judge calls safe (p_safe ≥ SAFE_AT)."""
    from components.lm.runtime import LoadedModel

    lm = LoadedModel(policy, tokenizer, device, "policy", engine)
    texts = generation.generate(lm, prompts, generation.SamplingParams(max_new_tokens, len(prompts)), desc="probe")
    return sum(v.p_safe >= SAFE_AT for v in judge_completions(judge, prompts, texts)) / max(len(prompts), 1)


def compute_dtype(model_cfg: source.ModelConfig) -> str:
    """The dtype the weights will compute in here (``auto`` resolved): part of the checkpoint key."""
    return str(runtime.pick_dtype(model_cfg.dtype, runtime.pick_device(model_cfg.device)))


def numerics(model_cfg: source.ModelConfig) -> str:
    """What fixes the run's arithmetic and sampled tokens here (compute dtype, generation engine):
    part of the checkpoint key, so a run never resumes one that decoded differently."""
    return f"{compute_dtype(model_cfg)}/{model_cfg.engine}"


def code_digest() -> str:
    """Digest of the code an RL run executes (this module's import closure, the same closure its
    dvc.yaml deps must cover): when DVC re-runs the stage because that code changed, the run
    starts afresh instead of resuming (or finding finished) checkpoints of the old code."""
    return closure_digest(__name__ if __name__ != "__main__" else "components.train_rl")


def checkpoint_dir(workspace: str | Path, cfg: TrainRLConfig, model_cfg: source.ModelConfig,
                   fingerprint: str, head_dir: str | Path, processes: int = 1) -> Path:
    """Checkpoints live outside DVC outputs (DVC clears outputs before a stage re-runs), keyed by
    everything that shapes the run, so a changed setting, model, numerics, head, RL code or number
    of processes (each draws its own samples) never resumes an unrelated run. ``fingerprint``: the
    resolved base model's."""
    scale = [f"processes={processes}"] if processes > 1 else []  # one process: the key it always had
    key = stable_id(json.dumps(cfg.__dict__, sort_keys=True, default=str), fingerprint, numerics(model_cfg),
                    dir_digest(head_dir), code_digest(), *scale)
    return Path(workspace) / ".cache" / "checkpoints" / STAGE / key


def _history(folder: Path, start: int) -> list[dict]:
    path = folder / "history.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return [r for r in rows if r["step"] < start]


def prompt_pools(prompts: pd.DataFrame, cfg: TrainRLConfig) -> tuple[list[str], list[str]]:
    """(training prompts: the ``train`` split, probe prompts: ``val`` harmful). Never ``test``."""
    kinds = ("harmful", "benign") if cfg.include_benign else ("harmful",)
    pool = sorted(prompts[(prompts.split == "train") & prompts.prompt_kind.isin(kinds)].prompt)
    probe = sorted(prompts[(prompts.split == "val") & (prompts.prompt_kind == "harmful")].prompt)[: cfg.probe_prompts]
    return pool, probe


def build(cfg: TrainRLConfig, model_cfg: source.ModelConfig, workspace: str):
    """The accelerator, the resolved model, and the policy (LoRA), value head and optimizer placed
    by accelerate. Every process builds the same initial state from ``cfg.seed``."""
    from accelerate import Accelerator

    dist.check_launch()
    # Before loading: accelerate picks each process's device (cuda:<local rank>) and opens the group.
    accelerator = Accelerator(cpu=runtime.pick_device(model_cfg.device).type == "cpu")
    n = accelerator.num_processes
    require(cfg.prompts_per_step >= n,
            f"train_rl.prompts_per_step={cfg.prompts_per_step} is below the {n} processes launched: each process "
            f"needs a prompt of every step; raise it (a multiple of {n} gives equal shares) or launch fewer.")
    with accelerator.main_process_first():  # a packaged model is converted once, by the main process
        resolved = source.resolve(model_cfg, workspace)
    lm = runtime.load(resolved, model_cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    policy = wrap_lora(lm.model, cfg.lora, None)  # LoRA init from the global RNG seeded just above (stage-owned)
    value_head = rl_loop.ValueHead(lm.model.config.hidden_size)
    trainable = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    # evaluation_mode: placement and mixed precision without a DDP wrapper; rl_loop.update sums the
    # gradients itself, on the global minibatch schedule (one collective per optimizer step).
    policy, value_head = (accelerator.prepare_model(m, evaluation_mode=True) for m in (policy, value_head))
    return accelerator, resolved, lm, policy, value_head, accelerator.prepare_optimizer(opt)


def run(cfg: TrainRLConfig, model_cfg: source.ModelConfig, prompts: pd.DataFrame, head_dir: Path,
        out: Path, ckpt: Path, workspace: str = ".", on_metrics: Callable[[int, dict], None] | None = None,
        stop_after: int | None = None) -> dict | None:
    """Train; returns the summary, or None when stopped early by ``stop_after`` (tests: a kill). With
    several processes only the main one probes, logs, checkpoints and writes ``out``; the others
    return None."""
    accelerator, resolved, lm, policy, value_head, opt = build(cfg, model_cfg, workspace)
    main = accelerator.is_main_process
    head = SafetyHead.load(head_dir, accelerator.device)
    judge = make_judge(cfg.judge)
    reward = CraftReward(head, judge, RewardWeights(cfg.w_lat, cfg.w_txt, cfg.w_cons), cfg.reward_source)
    pool, probe = prompt_pools(prompts, cfg)
    require(len(pool) >= cfg.prompts_per_step, f"train_rl: {len(pool)} training prompts < prompts_per_step.")
    start = rl_loop.restore_if_any(ckpt, policy, opt, value_head)
    history = _history(ckpt, start) if main else []
    unwrapped, device, engine = accelerator.unwrap_model(policy), accelerator.device, lm.engine
    probe_rate = functools.partial(probe_refusal_rate, unwrapped, lm.tokenizer, judge, probe, cfg.max_new_tokens,
                                   device, engine)
    save = functools.partial(rl_loop.save_checkpoint, ckpt, policy=unwrapped, opt=opt, value_head=value_head,
                             main=main)
    if start == 0 and main:
        base = {"rl/probe_refusal_rate": probe_rate()}
        history.append({"step": -1, **base})
    for step in range(start, cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        metrics = rl_loop.rl_step(cfg, step, policy, lm.tokenizer, value_head, opt, accelerator, reward, pool, gen, engine)
        last = step + 1 == cfg.steps
        if main:
            if (step + 1) % cfg.log_every == 0 or last:  # greedy probes: no RNG drawn, main process only
                metrics["rl/probe_refusal_rate"] = probe_rate()
                metrics["rl/obfuscation_gap"] = rl_loop.obfuscation_probe(unwrapped, lm.tokenizer, head, probe,
                                                                           device, engine)
            history.append({"step": step, **metrics})
            if on_metrics:
                on_metrics(step, metrics)
            log.info("step %d reward %.3f kl %.4f", step, metrics["rl/reward"], metrics["rl/kl"])
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            save(step=step)
            if main:
                (ckpt / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if stop_after is not None and step + 1 >= stop_after and not last:
            return None
        if dist.gather(metrics["rl/kl"] > cfg.kl_stop)[0] and not last:  # the main process decides for all
            log.warning("KL %.3f > kl_stop %.3f at step %d: stopping early", metrics["rl/kl"], cfg.kl_stop, step)
            save(step=step)
            break
    rl_loop.check_same_adapter(unwrapped)
    return finish(cfg, unwrapped, lm.tokenizer, head_dir, out, resolved, model_cfg, history) if main else None


def finish(cfg, policy, tokenizer, head_dir: Path, out: Path, resolved, model_cfg, history: list[dict]) -> dict:
    """Write adapter, head copy, model card and curves; return the summary metrics."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(policy, tokenizer, tmp / "adapter", resolved.model_id)
    shutil.copytree(head_dir, tmp / "head")
    card = {"base_model_source": model_cfg.source, "base_model_id": resolved.model_id,
            "base_model_fingerprint": resolved.fingerprint, "adapter": "adapter", "head": "head",
            "reward_source": cfg.reward_source, "advantage": cfg.advantage}
    (tmp / "model.json").write_text(json.dumps(card, indent=2))
    # DVC plots data (dvc.yaml plots:): the training steps, under the names MLflow records.
    (tmp / "history.json").write_text(json.dumps([h for h in history if h["step"] >= 0], indent=1))
    summary = summarise(history)
    plot_curves(history, tmp / "curves.png")
    for name in ("adapter", "head", "model.json", "history.json", "curves.png"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp / name), str(target))
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


def summarise(history: list[dict]) -> dict:
    steps = [h for h in history if h["step"] >= 0]
    q = max(1, len(steps) // 4)
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    probes = [h for h in history if "rl/probe_refusal_rate" in h]
    return {
        "steps": len(steps),
        "reward_first_quarter": mean(steps[:q], "rl/reward"), "reward_last_quarter": mean(steps[-q:], "rl/reward"),
        "reward_lat_first_quarter": mean(steps[:q], "rl/reward_r_lat"), "reward_lat_last_quarter": mean(steps[-q:], "rl/reward_r_lat"),
        "kl_last": steps[-1]["rl/kl"], "kl_max": max(s["rl/kl"] for s in steps),
        "probe_refusal_rate_start": probes[0]["rl/probe_refusal_rate"], "probe_refusal_rate_end": probes[-1]["rl/probe_refusal_rate"],
        "obfuscation_gap_end": steps[-1].get("rl/obfuscation_gap", float("nan")),
    }


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["step"] >= 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key in ("rl/reward", "rl/reward_r_lat", "rl/reward_r_txt", "rl/reward_r_cons"):
        axes[0].plot([h["step"] for h in steps], [h[key] for h in steps], label=key.split("/")[1])
    axes[0].set_title("reward"), axes[0].legend(fontsize=7)
    axes[1].plot([h["step"] for h in steps], [h["rl/kl"] for h in steps])
    axes[1].set_title("KL to reference (k3)")
    probes = [h for h in history if "rl/probe_refusal_rate" in h]
    axes[2].plot([h["step"] for h in probes], [h["rl/probe_refusal_rate"] for h in probes], marker="o")
    axes[2].set_title("probe refusal rate"), axes[2].set_ylim(-0.05, 1.05)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--prompts", True, "ingest output (data/ingest/prompts.parquet)"),
        ("--head", True, "trained head folder (data/train_head/head)"),
        ("--out", True, "output folder (data/train_rl)"),
        ("--ablation", False, "params section whose keys override train_rl (e.g. train_rl_text)"),
    ])
    name = args.ablation or STAGE
    section = {**(params.get(STAGE) or {}), **(params.get(args.ablation) or {} if args.ablation else {})}
    cfg = stage_config(TrainRLConfig, name, {name: section})
    model_cfg = source.model_config(params)
    procs = dist.state(runtime.pick_device(model_cfg.device))
    with procs.main_process_first():  # a packaged model is converted once, by the main process
        fingerprint = source.resolve(model_cfg).fingerprint
    ckpt = checkpoint_dir(".", cfg, model_cfg, fingerprint, args.head, procs.num_processes)
    import mlflow

    out = Path(args.out)
    # One MLflow run per stage: only the main process opens it and writes outputs.
    tracked = tracking.stage_run(name, cfg, model_cfg, tags={"checkpoint_dir": str(ckpt)}) \
        if procs.is_main_process else contextlib.nullcontext()
    with tracked:
        summary = run(cfg, model_cfg, read_table(args.prompts), Path(args.head), out, ckpt,
                      on_metrics=lambda step, m: mlflow.log_metrics(m, step=step))
        if procs.is_main_process:
            write_json(out / "metrics.json", summary)
            write_text(out / "summary.md", summary_markdown(summary, name))
            tracking.log_stage_outputs(name, summary, [out / "curves.png", out / "summary.md", out / "model.json"])
    procs.wait_for_everyone()  # the other processes exit once the main one has written everything
    return 0


def summary_markdown(s: dict, name: str = STAGE) -> str:
    return (f"# {name}\n\n{s['steps']} steps. Mean reward {s['reward_first_quarter']:+.3f} → "
            f"{s['reward_last_quarter']:+.3f} (first vs last quarter); latent reward "
            f"{s['reward_lat_first_quarter']:+.3f} → {s['reward_lat_last_quarter']:+.3f}; probe refusal rate "
            f"{s['probe_refusal_rate_start']:.0%} → {s['probe_refusal_rate_end']:.0%}; KL last {s['kl_last']:.4f} "
            f"(max {s['kl_max']:.4f}); obfuscation gap {s['obfuscation_gap_end']:+.3f}.\n\n![curves](curves.png)\n")


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
