"""Stage ``train_rl``: RL with latent rewards (CRAFT §4.2) on torch + peft, our own loop.

Per step: take ``prompts_per_step`` harmful and ``benign_per_step`` benign training prompts (each
kind an epoch-wise permutation of its pool, a function of seed and step: every prompt is seen once
per epoch, and a resumed run sees the same prompts), roll out ``group_size`` completions each from
the policy, score them with the kind-aware ``CraftReward`` (a refusal is right on a harmful prompt,
an answer on a benign one: see ``components.rl.rewards``), compute advantages, and run
``ppo_epochs`` passes of the clipped surrogate over minibatches with gradient accumulation. The
learning rate rises linearly over the first ``warmup_steps`` steps, then falls linearly to
``lr·lr_final`` at the last step (1.0: constant).

- ``advantage: grpo``: group baseline A = R − mean_group (Dr. GRPO, ``std_norm: false``) or
  (R − mean_group)/(std_group + 1e-6) (paper GRPO, ``std_norm: true``), for every token; a group
  with reward std below ``min_group_std`` gets A = 0 (DAPO dynamic sampling, logged as
  ``rl/flat_groups``); KL to the reference as a loss term, k3 estimator, coefficient ``kl_coef``.
- ``advantage: ppo``: a value head on the policy's last hidden state, per-token rewards (sequence
  reward on the last token, minus ``kl_coef``·(log π − log π_ref) per token when ``kl_in: reward``;
  with ``latent_rewards: dense`` the w_lat·R_lat part is spread over the tokens by potential-based
  shaping, ``components.rl.shaping``, on every rollout or, with ``dense_on: harmful``, on harmful
  ones only), GAE(γ, λ), value loss weighted by ``vf_coef``.
- ``kl_coef_benign``: the KL weight on benign prompts' rollouts, when it should differ from
  ``kl_coef`` (a per-row weight; unset, the scalar ``kl_coef`` covers every row).
- ``init: sft``: policy and reference start as the ``train_sft`` model (its adapter merged into the
  weights, ``--init-from``); the fresh LoRA learns on top, and the output adapter stacks the two
  (``components.rl.policy.save_stacked``), so evaluation loads it on the base like any other.
Checkpoint selection (``components.rl.selection``): before training, every ``log_every`` steps (none
before step ``select_from``) and at the end, greedy replies of up to ``select_max_new_tokens``
tokens (evaluation's budget) to fixed ``val`` prompts are graded by ``select_judge`` (the held-out
judge); the adapter with the best val_refusal − select_lambda·val_over_refusal (step −1, the
untrained adapter, included) is the output. With ``ema_decay`` > 0 the graded, kept and output
adapter is the Polyak average of the LoRA weights (``components.rl.average``), not the live one.
The reference policy is the model with the LoRA adapter disabled. ``accelerate`` places model and
optimizer; under ``accelerate launch --multi_gpu --num_processes N`` each process rolls out, scores
and back-propagates its share of every step's prompts, gradients are summed across processes
before each optimizer step (``components.rl.loop``), and only the main process opens the MLflow
run, selects, and writes checkpoints and outputs. Departures from the paper: LoRA instead of full
fine-tuning; fewer, larger steps; benign prompts with a kind-aware reward; Dr. GRPO advantages by
default; validation-based selection of the output adapter; the latent reward read from the frozen
reference's hidden states of the policy's text by default (``reward_source: reference``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from components.rl import checkpoint
from components.lm.adapters import save_adapter
from components.lm.under_test import load_under_test
from components.lm import source
from components.lm import runtime
from components.rl import loop as rl_loop
from components.rl import openings
from components.core import dist
from components.core import stage_cli
from components.core import tracking
from components.core.code import closure_digest
from components.core.config import require, stage_config
from components.head.model import SafetyHead
from components.core.io import dir_digest, read_table, write_json, write_text
from components.eval.judges import make_judge
from components.rl.config import INITS, TrainRLConfig  # noqa: F401 - the stage's config (params.yaml train_rl:)
from components.rl.policy import save_stacked, wrap_lora
from components.data.records import stable_id
from components.rl import gate, report, selection
from components.rl.start_adapter import start_adapter
from components.rl import average as weight_average
from components.rl.rewards import CraftReward, RewardWeights, obfuscation_gap

log = logging.getLogger("craft.train_rl")
STAGE = "train_rl"


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
                   fingerprint: str, head_dir: str | Path, processes: int = 1,
                   init_dir: str | Path | None = None) -> Path:
    """Checkpoints live outside DVC outputs (DVC clears outputs before a stage re-runs), keyed by
    everything that shapes the run, so a changed setting, model, numerics, head, starting adapter,
    RL code or number of processes (each draws its own samples) never resumes an unrelated run.
    ``fingerprint``: the resolved base model's."""
    scale = [f"processes={processes}"] if processes > 1 else []  # one process: the key it always had
    start = [dir_digest(init_adapter(cfg, init_dir))] if cfg.init != "base" else []  # base: the key it had
    key = stable_id(json.dumps(cfg.__dict__, sort_keys=True, default=str), fingerprint, numerics(model_cfg),
                    dir_digest(head_dir), code_digest(), *scale, *start)
    return Path(workspace) / ".cache" / "checkpoints" / STAGE / key


def gate_dir(root: str | Path, cfg: TrainRLConfig, model_cfg: source.ModelConfig, fingerprint: str,
             pools: dict[str, list[str]], processes: int = 1, start: Path | None = None) -> Path:
    """Where the adapter RL starts from (``components.rl.start_adapter``: peft's LoRA, probe-aligned,
    gated) is kept under ``root``, keyed by what shapes it: every setting but ``gate.RL_ONLY``, the model
    (``fingerprint``), numerics and where they run (device type, the CPU's model and kernels, CPU
    threads, library versions: each can change the trained weights, and none re-runs a DVC stage),
    the train prompts the probe and gate read (``pools``), the RL code, the number of processes and the adapter
    ``init: sft`` builds on. The CRAFT stage and its text-only ablation share a key: whichever runs
    second loads what the first computed."""
    import peft
    import transformers

    fields = {k: v for k, v in sorted(cfg.__dict__.items()) if k not in gate.RL_ONLY}
    device = runtime.pick_device(model_cfg.device).type
    cpu = [runtime.cpu_numerics()] if device == "cpu" else []  # CPUs differ in bf16 kernels
    where = (device, *cpu, f"threads={model_cfg.threads}", torch.__version__, transformers.__version__,
             peft.__version__)
    key = stable_id(json.dumps(fields, default=str), fingerprint, numerics(model_cfg), *where, code_digest(),
                    stable_id(json.dumps(pools["harmful"])), stable_id(json.dumps(pools["benign"])),
                    f"processes={processes}", dir_digest(start) if start is not None else "base")
    return Path(root) / STAGE / key


def init_adapter(cfg: TrainRLConfig, init_dir: str | Path | None) -> Path:
    """The adapter folder RL starts from under ``init: sft``: ``<init_dir>/adapter`` of a pipeline
    output folder (``data/train_sft``, ``--init-from``)."""
    require(init_dir is not None and (Path(init_dir) / "model.json").exists(),
            f"train_rl.init={cfg.init}: --init-from must name the train_sft output folder with its model.json "
            f"and adapter/ (got {init_dir!r}); run `craft run --stages train_sft` first, or set init: base.")
    return Path(init_dir) / json.loads((Path(init_dir) / "model.json").read_text()).get("adapter", "adapter")


def _history(folder: Path, start: int) -> list[dict]:
    path = folder / "history.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return [r for r in rows if r["step"] < start]


def prompt_pools(prompts: pd.DataFrame, cfg: TrainRLConfig) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training pools by kind: the ``train`` split; selection prompts by kind: the first
    ``select_harmful`` / ``select_benign`` of the sorted ``val`` split). Never ``test``."""
    def of(split: str, kind: str) -> list[str]:
        return sorted(prompts[(prompts.split == split) & (prompts.prompt_kind == kind)].prompt)

    pools = {"harmful": of("train", "harmful"), "benign": benign_pool(prompts, cfg) if cfg.benign_per_step else []}
    val = {"harmful": of("val", "harmful")[: cfg.select_harmful], "benign": of("val", "benign")[: cfg.select_benign]}
    require(len(pools["harmful"]) >= 1 and len(val["harmful"]) >= 1,
            "train_rl: the prompts need harmful prompts in the train and val splits (re-run ingest).")
    require(cfg.benign_per_step == 0 or len(pools["benign"]) >= 1,
            f"train_rl.benign_per_step={cfg.benign_per_step}: the prompts have no benign train prompts; "
            "set benign_per_step: 0 or ingest benign prompts.")
    return pools, val


def benign_pool(prompts: pd.DataFrame, cfg: TrainRLConfig) -> list[str]:
    """The sorted benign ``train`` prompts of ``cfg.benign_sources`` (all benign ones when empty)."""
    benign = prompts[(prompts.split == "train") & (prompts.prompt_kind == "benign")]
    if not cfg.benign_sources:
        return sorted(benign.prompt)
    have = sorted(set(benign.source))
    missing = sorted(set(cfg.benign_sources) - set(have))
    require(not missing, f"train_rl.benign_sources: {missing} have no benign train prompts; the sources "
                         f"with some are {have} (or use [] for all of them).")
    return sorted(benign[benign.source.isin(cfg.benign_sources)].prompt)


def lr_factor(warmup: int, steps: int, final: float = 1.0) -> Callable[[int], float]:
    """LR factor of RL step s: (s + 1)/warmup during warm-up, then linear from 1 at step ``warmup``
    to ``final`` at the last step (``steps`` − 1). With no step after warm-up to fall over
    (steps ≤ warmup + 1) the factor stays 1 and ``final`` has no effect."""
    span = steps - 1 - warmup

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 1.0 - (1.0 - final) * min(1.0, (s - warmup) / span) if span > 0 else 1.0
    return factor


def build(cfg: TrainRLConfig, model_cfg: source.ModelConfig, workspace: str, start: Path | None = None):
    """The accelerator, the resolved model, and the policy (LoRA), value head and optimizer placed
    by accelerate, and the LR schedule. Every process builds the same initial state from ``cfg.seed``.
    ``start`` (init: sft, ``init_adapter``): the model is base + that adapter merged (the policy's and
    the reference's starting point), and the fresh LoRA learns on top of it."""
    from accelerate import Accelerator

    dist.check_launch()
    # Before loading: accelerate picks each process's device (cuda:<local rank>) and opens the group.
    accelerator = Accelerator(cpu=runtime.pick_device(model_cfg.device).type == "cpu")
    n, per_step = accelerator.num_processes, cfg.prompts_per_step + cfg.benign_per_step
    require(per_step >= n,
            f"train_rl: prompts_per_step + benign_per_step = {per_step} is below the {n} processes launched: each "
            f"process needs a prompt of every step; raise them (a multiple of {n} gives equal shares) or launch fewer.")
    with accelerator.main_process_first():  # a packaged model is converted once, by the main process
        resolved = source.resolve(model_cfg, workspace)
    if start is None:
        lm = runtime.load(resolved, model_cfg)
    else:
        lm = load_under_test(str(start.parent), model_cfg, workspace)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    policy = wrap_lora(lm.model, cfg.lora, None)  # LoRA init from the global RNG seeded just above (stage-owned)
    value_head = rl_loop.ValueHead(lm.model.config.hidden_size)
    trainable = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    factor = lr_factor(cfg.warmup_steps, cfg.steps, cfg.lr_final)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)  # stepped once per RL step
    # evaluation_mode: placement and mixed precision without a DDP wrapper; rl_loop.update sums the
    # gradients itself, on the global minibatch schedule (one collective per optimizer step).
    policy, value_head = (accelerator.prepare_model(m, evaluation_mode=True) for m in (policy, value_head))
    return accelerator, resolved, lm, policy, value_head, accelerator.prepare_optimizer(opt), schedule


def run(cfg: TrainRLConfig, model_cfg: source.ModelConfig, prompts: pd.DataFrame, head_dir: Path,
        out: Path, ckpt: Path, workspace: str = ".", on_metrics: Callable[[int, dict], None] | None = None,
        stop_after: int | None = None, init_dir: str | Path | None = None, gates: Path | None = None) -> dict | None:
    """Train; returns the summary, or None when stopped early by ``stop_after`` (tests: a kill). With
    several processes only the main one selects, logs, checkpoints and writes ``out``; the others
    return None. ``gates``: the root of the start-adapter cache (``gate_dir``); None: no cache."""
    first = init_adapter(cfg, init_dir) if cfg.init != "base" else None  # init: sft: the adapter RL builds on
    accelerator, resolved, lm, policy, value_head, opt, schedule = build(cfg, model_cfg, workspace, first)
    main = accelerator.is_main_process
    head = SafetyHead.load(head_dir, accelerator.device)
    reward = CraftReward(head, make_judge(cfg.judge), RewardWeights(cfg.w_lat, cfg.w_txt, cfg.w_cons),
                         cfg.reward_source)
    select_judge = make_judge(cfg.select_judge) if main else None  # heldout: data/train_judge/judge.json
    pools, val = prompt_pools(prompts, cfg)
    contrast = pools["benign"] or benign_pool(prompts, cfg)  # probe and gate: the train split's, at benign_per_step 0
    if cfg.opening_coef > 0 or cfg.gate_steps > 0 or cfg.benign_candidates > 1:  # a bad opening list fails here
        openings.opening_ids(lm.tokenizer, cfg.openings)
    average = weight_average.maybe(accelerator.unwrap_model(policy), cfg.ema_decay)  # θ̄; None: off
    start = checkpoint.resume(ckpt, policy, opt, value_head, schedule, average)
    history = _history(ckpt, start) if main else []
    best = selection.saved_best(ckpt) if main and start > 0 else None
    unwrapped, device, engine = accelerator.unwrap_model(policy), accelerator.device, lm.engine

    def select(step: int, metrics: dict) -> None:  # greedy: no RNG drawn, main process only
        nonlocal best
        with weight_average.applied(average, unwrapped):  # ema_decay > 0: θ̄ is graded, kept and output
            point, texts = selection.evaluate(unwrapped, lm.tokenizer, select_judge, val["harmful"], val["benign"],
                                              cfg.select_max_new_tokens, device, engine, step, cfg.select_lambda)
            best = selection.keep_if_best(ckpt, unwrapped, point, best)
            if step >= 0:  # at step −1 the policy is the reference, or the gated one: no RL gap yet
                metrics["rl/obfuscation_gap"] = obfuscation_gap(unwrapped, lm.tokenizer, head, val["harmful"],
                                                                texts, device)
        metrics.update(point.metrics())

    save = functools.partial(checkpoint.save_step, ckpt, policy=unwrapped, opt=opt, value_head=value_head,
                             main=main, schedule=schedule, average=average)
    hook = gate_metrics(on_metrics if main else None, cfg.gate_steps)  # the gate's steps, logged by the main process
    gated = {}  # a resumed run's checkpoints hold the start adapter
    if start == 0:
        reads = {**pools, "benign": contrast}  # what the probe and the gate read
        cache = gate_dir(gates, cfg, model_cfg, resolved.fingerprint, reads, accelerator.num_processes, first) \
            if gates is not None else None
        gated = start_adapter(cfg, policy, lm.tokenizer, reads, accelerator, hook, cache)
    if start == 0 and average is not None:
        average.reset(unwrapped)  # θ̄ starts at the gated weights (a resumed run restored its own)
    if start == 0 and main:
        history.append({"step": -1, **gated})
        select(-1, history[-1])
    for step in range(start, cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        lr = opt.param_groups[0]["lr"]  # this step's: lr·lr_factor(step) (the schedule is restored on resume)
        metrics = rl_loop.rl_step(cfg, step, policy, lm.tokenizer, value_head, opt, accelerator, reward, pools, gen,
                                  engine)
        schedule.step()
        if average is not None:
            average.update(unwrapped)
        metrics["rl/lr"] = lr
        last = step + 1 == cfg.steps
        stop = dist.gather(metrics["rl/kl"] > cfg.kl_stop)[0] and not last  # the main process decides for all
        if main:
            if selection.due(step, cfg.log_every, cfg.select_from) or last or stop:
                select(step, metrics)
            history.append({"step": step, **metrics})
            if on_metrics:
                on_metrics(step, metrics)
            log.info("step %d reward %.3f kl %.4f", step, metrics["rl/reward"], metrics["rl/kl"])
        if (step + 1) % cfg.checkpoint_every == 0 or last or stop:
            save(step=step)
            if main:
                (ckpt / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if stop_after is not None and step + 1 >= stop_after and not last:
            return None
        if stop:
            log.warning("KL %.3f > kl_stop %.3f at step %d: stopping early", metrics["rl/kl"], cfg.kl_stop, step)
            break
    rl_loop.check_same_adapter(unwrapped)
    return finish(cfg, unwrapped, lm.tokenizer, head_dir, out, resolved, model_cfg, history, ckpt, first) \
        if main else None


def gate_metrics(on_metrics: Callable[[int, dict], None] | None, steps: int) -> Callable[[int, dict], None] | None:
    """The gate's per-step metrics under their own keys, at steps g − ``steps`` (−steps … −1), before
    RL's step 0, so the gate and RL share one axis."""
    return None if on_metrics is None else lambda g, m: on_metrics(g - steps, m)


def finish(cfg, policy, tokenizer, head_dir: Path, out: Path, resolved, model_cfg, history: list[dict],
           ckpt: Path, start: Path | None = None) -> dict:
    """Load the selected (best) adapter, write it with a head copy, model card and curves; return
    the summary metrics. ``start``: the adapter RL started from (init: sft), stacked under the
    RL adapter, so the output is one adapter on the base model."""
    best = selection.Point(**checkpoint.load_best(ckpt, policy))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if start is None:
        save_adapter(policy, tokenizer, tmp / "adapter", resolved.model_id)
    else:
        save_stacked(policy, start, tokenizer, tmp / "adapter", resolved.model_id)
    shutil.copytree(head_dir, tmp / "head")
    card = {"base_model_source": model_cfg.source, "base_model_id": resolved.model_id,
            "base_model_fingerprint": resolved.fingerprint, "adapter": "adapter", "head": "head",
            "reward_source": cfg.reward_source, "advantage": cfg.advantage, "selected_step": best.step,
            "init": cfg.init}
    (tmp / "model.json").write_text(json.dumps(card, indent=2))
    # DVC plots data (dvc.yaml plots:): the training steps, under the names MLflow records.
    (tmp / "history.json").write_text(json.dumps([h for h in history if h["step"] >= 0], indent=1))
    summary = report.summarise(history, best)
    report.plot_curves(history, tmp / "curves.png", best.step)
    for name in ("adapter", "head", "model.json", "history.json", "curves.png"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp / name), str(target))
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


def config_of(params: dict, ablation: str | None = None) -> TrainRLConfig:
    """``train_rl``'s config, or an ablation's: the params section ``ablation`` (e.g. train_rl_text)
    overrides ``train_rl`` key by key."""
    name = ablation or STAGE
    section = {**(params.get(STAGE) or {}), **(params.get(ablation) or {} if ablation else {})}
    return stage_config(TrainRLConfig, name, {name: section})


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--prompts", True, "ingest output (data/ingest/prompts.parquet)"),
        ("--head", True, "trained head folder (data/train_head/head)"),
        ("--out", True, "output folder (data/train_rl)"),
        ("--ablation", False, "params section whose keys override train_rl (e.g. train_rl_text)"),
        ("--init-from", False, "under train_rl.init: sft, the train_sft output folder RL starts from (data/train_sft)"),
    ])
    name = args.ablation or STAGE
    cfg = config_of(params, args.ablation)
    model_cfg = source.model_config(params)
    procs = dist.state(runtime.pick_device(model_cfg.device))
    with procs.main_process_first():  # a packaged model is converted once, by the main process
        fingerprint = source.resolve(model_cfg).fingerprint
    ckpt = checkpoint_dir(".", cfg, model_cfg, fingerprint, args.head, procs.num_processes, args.init_from)
    import mlflow

    out = Path(args.out)
    # One MLflow run per stage: only the main process opens it and writes outputs.
    tracked = tracking.stage_run(name, cfg, model_cfg, tags={"checkpoint_dir": str(ckpt)}) \
        if procs.is_main_process else contextlib.nullcontext()
    with tracked:
        summary = run(cfg, model_cfg, read_table(args.prompts), Path(args.head), out, ckpt,
                      on_metrics=lambda step, m: mlflow.log_metrics(m, step=step), init_dir=args.init_from,
                      gates=Path(".cache") / "gates")
        if procs.is_main_process:
            write_json(out / "metrics.json", summary)
            write_text(out / "summary.md", report.summary_markdown(summary, name))
            tracking.log_stage_outputs(name, summary, [out / "curves.png", out / "summary.md", out / "model.json"])
    procs.wait_for_everyone()  # the other processes exit once the main one has written everything
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
