from components.evaluate import EvaluateConfig, run as evaluate
from components.lm.under_test import load_under_test
from components.lm.source import ModelConfig
from components.train_sft import TrainSFTConfig, run, sft_examples
from tests.factories import good_frame


def test_sft_examples_use_safe_traces_only():
    ex = sft_examples(good_frame(), include_benign=False)
    texts = [e["messages"][1]["content"] for e in ex]
    assert ex and not any("Sure, I will explain" in t for t in texts)


def test_sft_baseline_trains_and_loads(tiny_model_dir, tmp_path):
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    summary = run(TrainSFTConfig(max_steps=2, batch_size=4, max_length=64, lora_r=4, lora_alpha=8),
                  model, good_frame(), tmp_path / "train_sft")
    assert summary["steps"] == 2 and (tmp_path / "train_sft" / "adapter").exists()
    lm = load_under_test(str(tmp_path / "train_sft"), model)
    assert lm.model_id.endswith("+train_sft")
