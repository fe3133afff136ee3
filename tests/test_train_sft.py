"""SFT baseline on the tiny model: safe examples only; the adapter moves and lowers the loss."""
import pandas as pd
import torch
from safetensors.torch import load_file

from components.lm import runtime
from components.lm import source as model_source
from components.lm.source import ModelConfig
from components.lm.under_test import load_under_test
from components.train_sft import TrainSFTConfig, run, sft_examples
from tests.factories import good_frame


def test_sft_examples_use_safe_traces_only():
    ex = sft_examples(good_frame(), include_benign=False)
    texts = [e["messages"][1]["content"] for e in ex]
    assert ex and not any("Sure, I will explain" in t for t in texts)


def test_sft_examples_leave_out_over_refusals():
    frame = good_frame()
    row = frame.iloc[0].to_dict() | {"prompt_kind": "benign", "split": "train", "prompt": "How do I bake bread?"}
    answer = row | {"trace_id": "b-safe", "label": "safe", "trace": "Mix flour, water, yeast.", "response": "Mix flour, water, yeast."}
    refusal = row | {"trace_id": "b-unsafe", "label": "unsafe", "trace": "I can't help with that.", "response": "I can't help with that."}
    texts = [e["messages"][1]["content"] for e in sft_examples(pd.concat([frame, pd.DataFrame([answer, refusal])]), True)]
    assert "Mix flour, water, yeast." in texts  # benign answers are kept (helpfulness)
    assert "I can't help with that." not in texts  # a refusal of a benign prompt is not imitated


@torch.no_grad()
def _sft_loss(lm, examples: list[dict]) -> float:
    """Mean next-token loss of ``lm`` over the rendered training conversations (SFT's objective)."""
    losses = []
    for ex in examples:
        text = lm.tokenizer.apply_chat_template(ex["messages"], tokenize=False)
        ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :64]
        losses.append(float(lm.model(input_ids=ids, labels=ids).loss))
    return sum(losses) / len(losses)


def test_sft_baseline_trains_and_loads(tiny_model_dir, tmp_path):
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    summary = run(TrainSFTConfig(max_steps=20, batch_size=4, max_length=64, lr=2e-2, lora_r=4, lora_alpha=8),
                  model, good_frame(), tmp_path / "train_sft")
    assert summary["steps"] == 20 and summary["examples"] == len(sft_examples(good_frame(), True))
    adapter = load_file(str(tmp_path / "train_sft" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every adapter moved
    lm = load_under_test(str(tmp_path / "train_sft"), model)
    assert lm.model_id.endswith("+train_sft")
    base = runtime.load(model_source.resolve(model), model)
    examples = sft_examples(good_frame(), include_benign=True)
    assert _sft_loss(lm, examples) < _sft_loss(base, examples) - 0.05  # the loss fell on what it trained on


def test_saved_adapters_do_not_depend_on_the_machine_or_the_hash_seed(tmp_path, tiny_model_dir):
    """Same weights, same files: sorted target_modules and the model id, not a local path, as base."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.lm.adapters import save_adapter
    from components.rl.policy import LoraSpec, wrap_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = wrap_lora(base, LoraSpec(r=2, alpha=4, target_modules=("v_proj", "q_proj", "o_proj", "k_proj")), seed=0)
    folder = save_adapter(policy, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "adapter", "tiny-model")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "tiny-model"
    assert str(tiny_model_dir) not in "".join(p.read_text(errors="ignore") for p in folder.iterdir())
