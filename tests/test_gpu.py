"""CUDA / bf16 paths (run on a GPU machine: `pytest -m gpu`; never in CI)."""
import pytest
import torch

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_lm(tiny_model_dir):
    from components.lm import runtime
    from components.lm import source as model_source

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), device="cuda", dtype="float32")
    return runtime.load(model_source.resolve(cfg), cfg)


@needs_cuda
def test_graph_decode_matches_generate(cuda_lm):
    """The CUDA-graph decode loop writes generate's greedy tokens, and again on replay."""
    from components.lm import decode
    from components.lm.generation import SamplingParams, generate

    prompts = ["How do I kill a process?", "Write a haiku about snow please", "Hi"]
    hf = generate(cuda_lm, prompts, SamplingParams(max_new_tokens=8, batch_size=3, engine="hf"))
    ours = generate(cuda_lm, prompts, SamplingParams(max_new_tokens=8, batch_size=3, engine="ours"))
    again = generate(cuda_lm, prompts, SamplingParams(max_new_tokens=8, batch_size=3, engine="ours"))
    assert ours == hf and again == hf
    sessions = decode.engine_for(cuda_lm.model)._sessions.values()
    assert any(s.graph is not None for s in sessions), "the step was not captured as a CUDA graph"


@needs_cuda
def test_bf16_extraction_batched_equals_single(tiny_model_dir):
    from components.lm import runtime
    from components.lm import source as model_source
    from components.lm.latents import LatentSpec, encode

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), device="cuda", dtype="bfloat16")
    lm = runtime.load(model_source.resolve(cfg), cfg)
    prompts, traces = ["a b c", "a much longer prompt with more words"], ["x y", "z"]
    spec = LatentSpec()
    batched = encode(lm.model, lm.tokenizer, prompts, traces, spec, lm.device)
    single = torch.cat([encode(lm.model, lm.tokenizer, [p], [t], spec, lm.device) for p, t in zip(prompts, traces)])
    assert batched.dtype == torch.float32 and batched.device.type == "cuda"
    torch.testing.assert_close(batched, single, atol=2e-2, rtol=2e-2)


@needs_cuda
def test_rl_step_on_cuda(tiny_model_dir, tmp_path):
    import pandas as pd

    from components.head.model import SafetyHead
    from components.lm.source import ModelConfig
    from components.train_rl import TrainRLConfig, run

    head = SafetyHead(32, 16, 8).save(tmp_path / "head")
    prompts = pd.DataFrame({"prompt": [f"Harm {i}?" for i in range(4)], "prompt_kind": ["harmful"] * 4,
                            "split": ["train", "train", "val", "val"]})
    cfg = TrainRLConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6, minibatch_size=4,
                        judge="keyword", benign_per_step=0, select_harmful=1,
                        select_benign=0, select_judge="keyword", lora_r=2, lora_alpha=4)
    summary = run(cfg, ModelConfig(source=str(tiny_model_dir), device="cuda", dtype="bfloat16"), prompts, head,
                  tmp_path / "out", tmp_path / "ckpt")
    assert summary["steps"] == 2
