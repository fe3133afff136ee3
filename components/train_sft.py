"""Stage ``train_sft``: the STAR-1 / SafeChain-style baseline — supervised fine-tuning on safe traces.

TRL's ``SFTTrainer`` with a LoRA adapter (same rank and targets as ``train_rl``) on the curated
``safe`` and ``rethink`` traces of harmful training prompts plus the model's own answers to benign
training prompts (to keep helpfulness; its refusals of benign prompts, labelled ``unsafe``, are left out). The assistant turn is ``<think>trace</think>response`` where
the trace differs from the response, else the response. Output: ``adapter/`` + ``model.json`` in
the same layout as ``train_rl``, so evaluation and registration treat both alike.

Inside the stage's MLflow run, TRL reports every logged step (``loss``, ``grad_norm``,
``learning_rate``, …, every ``logging_steps``) to that run through transformers' MLflowCallback,
and the trainer's arguments as params; the callback never opens a run of its own, nor logs
checkpoints (``MLFLOW_CALLBACK_ENV``). Called without an active run, ``run`` reports nowhere.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.lm import source
from components.lm import runtime
from components.lm.adapters import save_adapter
from components.core import datasets, stage_cli
from components.core import tracking
from components.core.config import require, stage_config
from components.core.io import read_table, write_json, write_text

log = logging.getLogger("craft.train_sft")
STAGE = "train_sft"
MLFLOW_CALLBACK_ENV = {"HF_MLFLOW_LOG_ARTIFACTS": "FALSE", "MLFLOW_NESTED_RUN": "FALSE", "MLFLOW_FLATTEN_PARAMS": "TRUE"}
"""Settings transformers' MLflowCallback reads when training starts: log into the active stage run
(not a nested one), no checkpoint artifacts (the adapter is a DVC output), nested args as flat params."""


@dataclass(frozen=True)
class TrainSFTConfig:
    """params.yaml:train_sft."""

    max_steps: int = 30
    """Optimizer steps of the SFT run; >= 1."""
    batch_size: int = 8
    """Examples per device batch; >= 1."""
    lr: float = 5e-4
    """Learning rate of the LoRA weights; > 0."""
    max_length: int = 256
    """Tokens per example; longer examples are truncated."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scale α (the update is scaled by α / r)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the modules that get LoRA adapters."""
    include_benign: bool = True
    """Also train on benign prompts' traces (beside harmful prompts' safe / rethink traces)."""
    seed: int = 0
    """Seed passed to the TRL trainer (LoRA init, data order)."""

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, f"train_sft.max_steps={self.max_steps!r}: use 1 or more, e.g. 30.")
        require(self.batch_size >= 1, f"train_sft.batch_size={self.batch_size!r}: use 1 or more, e.g. 8.")
        require(self.lr > 0, f"train_sft.lr={self.lr!r}: use a positive learning rate, e.g. 0.0005.")


def sft_examples(traces: pd.DataFrame, include_benign: bool) -> list[dict]:
    """Conversational examples from the train split: safe/rethink traces of harmful prompts (+ benign)."""
    rows = traces[(traces.split == "train") & (
        ((traces.prompt_kind == "harmful") & traces.label.isin(["safe", "rethink"]))
        | ((traces.prompt_kind == "benign") & include_benign & (traces.label == "safe")))]  # not over-refusals
    out = []
    for r in rows.itertuples():
        answer = r.response if r.trace == r.response else f"<think>\n{r.trace}\n</think>\n{r.response}"
        out.append({"messages": [{"role": "user", "content": r.prompt}, {"role": "assistant", "content": answer}]})
    return out


def run(cfg: TrainSFTConfig, model_cfg: source.ModelConfig, traces: pd.DataFrame, out: Path,
        workspace: str = ".") -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    examples = sft_examples(traces, cfg.include_benign)
    require(len(examples) > 0, "train_sft: no safe training traces in the pair dataset.")
    resolved = source.resolve(model_cfg, workspace)
    lm = runtime.load(resolved, model_cfg)
    lm.tokenizer.padding_side = "right"
    work = out.with_name(out.name + ".work")
    args = SFTConfig(output_dir=str(work), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                     learning_rate=cfg.lr, max_length=cfg.max_length, logging_steps=5, save_strategy="no",
                     report_to=["mlflow"] if _mlflow_active() else [], seed=cfg.seed,
                     use_cpu=lm.device.type == "cpu", bf16=False,
                     gradient_checkpointing=False, assistant_only_loss=False, disable_tqdm=False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=lm.tokenizer, peft_config=lora)
    with _mlflow_callback_env():
        result = trainer.train()
    lm.tokenizer.padding_side = "left"
    if out.exists():
        shutil.rmtree(out)
    save_adapter(trainer.model, lm.tokenizer, out / "adapter", resolved.model_id)
    (out / "model.json").write_text(json.dumps({
        "base_model_source": model_cfg.source, "base_model_id": resolved.model_id,
        "base_model_fingerprint": resolved.fingerprint, "adapter": "adapter", "method": "sft"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return {"examples": len(examples), "train_loss": float(result.training_loss), "steps": cfg.max_steps}


def _mlflow_active() -> bool:
    """Whether TRL should report: a run is active and MLflow reporting is not switched off
    (``DISABLE_MLFLOW_INTEGRATION``, which transformers honours)."""
    import mlflow
    from transformers.integrations import is_mlflow_available

    return mlflow.active_run() is not None and is_mlflow_available()


@contextlib.contextmanager
def _mlflow_callback_env():
    """``MLFLOW_CALLBACK_ENV`` while training, and no ``MLFLOW_RUN_ID`` (with it the callback would
    start that run on top of the active one, which fails); the caller's values come back after."""
    keys = (*MLFLOW_CALLBACK_ENV, "MLFLOW_RUN_ID")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(MLFLOW_CALLBACK_ENV)
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--data", True, "pair dataset (data/curate/traces.parquet)"),
        ("--validation", False, "validate's result.json (data/validate/result.json): refuse unless it passed"),
        ("--out", True, "output folder (data/train_sft)"),
    ])
    if args.validation:
        stage_cli.require_validated(args.validation)
    cfg = stage_config(TrainSFTConfig, STAGE, params)
    model_cfg = source.model_config(params)
    out = Path(args.out)
    with tracking.stage_run(STAGE, cfg, model_cfg):
        traces = read_table(args.data)
        datasets.log_splits(traces[traces["split"] == "train"], args.data, "traces")  # SFT reads train only
        summary = run(cfg, model_cfg, traces, out)
        write_json(out / "metrics.json", summary)
        write_text(out / "summary.md", f"# train_sft\n\nLoRA SFT on {summary['examples']} safe examples, "
                                       f"{summary['steps']} steps, final train loss {summary['train_loss']:.3f}.\n")
        tracking.log_stage_outputs(STAGE, summary)
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
