"""RL from the SFT adapter (train_rl.init: sft): one output adapter on the base that equals SFT then RL."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.core.config import ConfigError
from components.head.model import SafetyHead
from components.lm.adapters import save_adapter
from components.lm.latents import LatentSpec
from components.lm.source import ModelConfig
from components.lm.under_test import load_under_test
from components.rl.policy import LoraSpec, save_stacked, wrap_lora
from components.train_rl import TrainRLConfig, init_adapter, run
from tests.test_train_rl import PROMPTS, _cfg

IDS = torch.tensor([[5, 17, 33, 9, 60, 2]])


def _model_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)


def _random_b(model, seed: int) -> None:
    """LoRA B starts at zero (adapter = identity): give it values so the test can see it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _pipeline_folder(model, tokenizer, folder: Path, model_cfg: ModelConfig) -> Path:
    save_adapter(model, tokenizer, folder / "adapter", "tiny")
    (folder / "model.json").write_text(json.dumps({"base_model_source": model_cfg.source, "adapter": "adapter"}))
    return folder


@pytest.fixture
def sft_dir(tiny_model_dir, tmp_path) -> Path:
    """A train_sft-shaped output folder whose adapter changes the model."""
    from components.lm import runtime, source

    cfg = _model_cfg(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    sft = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=1)
    _random_b(sft, 1)
    return _pipeline_folder(sft, lm.tokenizer, tmp_path / "sft", cfg)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_stacked_adapter_on_base_equals_rl_on_merged_sft(tiny_model_dir, sft_dir, tmp_path):
    cfg = _model_cfg(tiny_model_dir)
    merged = load_under_test(str(sft_dir), cfg)  # base with the SFT adapter merged in
    policy = wrap_lora(merged.model, LoraSpec(r=4, alpha=16), seed=2)  # another scale than SFT's
    _random_b(policy, 2)
    want = _logits(policy)
    assert not torch.allclose(want, _logits(load_under_test(str(sft_dir), cfg).model))  # RL moved it
    save_stacked(policy, sft_dir / "adapter", merged.tokenizer, tmp_path / "out" / "adapter", "tiny")
    (tmp_path / "out" / "model.json").write_text(json.dumps({"base_model_source": cfg.source}))
    got = _logits(load_under_test(str(tmp_path / "out"), cfg).model)  # fresh base + the stacked adapter
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(_logits(policy), want) and list(policy.peft_config) == ["default"]  # left as it was
    body = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert body["r"] == 8 and body["base_model_name_or_path"] == "tiny"


def test_rl_from_sft_writes_one_adapter_on_base(tiny_model_dir, sft_dir, tmp_path):
    torch.manual_seed(0)
    head = SafetyHead(32, 16, 8, LatentSpec()).save(tmp_path / "head")
    cfg = _cfg(steps=2, init="sft")
    summary = run(cfg, _model_cfg(tiny_model_dir), PROMPTS, head, tmp_path / "out", tmp_path / "ckpt",
                  init_dir=sft_dir)
    assert summary["steps"] == 2
    weights = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    ranks = {v.shape[0] for k, v in weights.items() if "lora_A" in k}
    assert ranks == {cfg.lora_r + 4}  # SFT's rank 4 stacked with RL's
    assert json.loads((tmp_path / "out" / "model.json").read_text())["init"] == "sft"
    load_under_test(str(tmp_path / "out"), _model_cfg(tiny_model_dir))  # loads on the base as any adapter


def test_init_is_checked_with_a_fix():
    with pytest.raises(ConfigError, match="init"):
        TrainRLConfig(init="warm")
    with pytest.raises(ConfigError, match="--init-from"):
        init_adapter(TrainRLConfig(init="sft"), None)
