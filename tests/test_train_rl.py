"""The RL loop on the tiny model: adapter moves, base stays, reward sign, resume = uninterrupted."""
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from components.head.model import SafetyHead
from components.eval.judges import KeywordRefusalJudge
from components.lm.latents import LatentSpec
from components.lm.source import ModelConfig
from components.rl.rewards import CraftReward
from components.train_rl import TrainRLConfig, lr_factor, run

PROMPTS = pd.DataFrame({
    "prompt": [f"How do I do harmful thing {i}?" for i in range(8)] + ["Bake bread?", "Explain rain."],
    "prompt_kind": ["harmful"] * 8 + ["benign"] * 2,
    "split": ["train"] * 6 + ["val"] * 2 + ["train", "val"],
})


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    torch.manual_seed(0)
    head = SafetyHead(32, 16, 8, LatentSpec())
    return head.save(tmp_path_factory.mktemp("head") / "head")


def _cfg(**kw):
    base = dict(steps=4, prompts_per_step=2, benign_per_step=1, group_size=2, max_new_tokens=6, lr=5e-3,
                warmup_steps=2, minibatch_size=2, ppo_epochs=1, judge="keyword", select_judge="keyword",
                select_harmful=2, select_benign=1, log_every=2, checkpoint_every=2, lora_r=4, lora_alpha=8,
                min_group_std=0.0,  # a random tiny model's rewards barely differ within a group: train on them anyway
                gate_steps=0, benign_candidates=1)  # the round-19 defaults off: tests of them turn them on
    base.update(kw)
    return TrainRLConfig(**base)


def _best_adapter(ckpt: Path) -> dict:
    """The selected adapter kept in the checkpoint folder, under peft's saved names, as lists."""
    weights = load_file(str(ckpt / "best" / "adapter.safetensors"))
    return {k.replace(".default", ""): v.tolist() for k, v in weights.items()}


def _output_adapter(out: Path) -> dict:
    return {k: v.tolist() for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items()}


def _last_checkpoint_adapter(ckpt: Path) -> dict:
    """The adapter of the newest step checkpoint (the output adapter is the *selected* one)."""
    return load_file(str(sorted(ckpt.glob("step-*"))[-1] / "adapter.safetensors"))


def _model(tiny_model_dir):
    return ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)


@pytest.mark.parametrize("advantage", ["grpo", "ppo"])
def test_adapter_changes_base_does_not(tiny_model_dir, head_dir, tmp_path, advantage):
    cfg = _cfg(advantage=advantage, steps=2, kl_in="reward" if advantage == "ppo" else "loss")
    summary = run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "out", tmp_path / "ckpt")
    assert summary["steps"] == 2 and summary["selected_step"] in (-1, 0, 1)
    trained = _last_checkpoint_adapter(tmp_path / "ckpt")
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved
    assert _output_adapter(tmp_path / "out") == _best_adapter(tmp_path / "ckpt")  # the output is the selected one
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert not any("lora" in k for k in base)  # the base model folder was not touched
    assert (tmp_path / "out" / "head" / "head.json").exists() and (tmp_path / "out" / "curves.png").exists()


def test_resume_matches_uninterrupted(tiny_model_dir, head_dir, tmp_path):
    cfg = _cfg(warmup_steps=4)  # resumes mid warm-up: the LR schedule is part of the checkpoint
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a")
    assert run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b", stop_after=2) is None
    assert not (tmp_path / "b" / "adapter").exists()
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b")  # resumes at step 2
    for a, b in ((_last_checkpoint_adapter(tmp_path / "ckpt_a"), _last_checkpoint_adapter(tmp_path / "ckpt_b")),
                 (_output_adapter(tmp_path / "a"), _output_adapter(tmp_path / "b"))):  # trained and selected
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_lr_rises_over_warmup_then_falls_linearly_to_lr_final():
    f = lr_factor(warmup=2, steps=7, final=0.2)
    assert [round(f(s), 6) for s in range(7)] == [0.5, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert [lr_factor(2, 7)(s) for s in range(2, 7)] == [1.0] * 5  # lr_final 1.0: constant after warm-up
    assert [lr_factor(4, 4, 0.1)(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # no steps left to fall over
    assert [lr_factor(2, 3, 0.1)(s) for s in range(3)] == [0.5, 1.0, 1.0]  # one step after warm-up: no fall either
    assert [lr_factor(0, 3, 0.5)(s) for s in range(3)] == [1.0, 0.75, 0.5]  # no warm-up: the fall starts at once
    with pytest.raises(ValueError, match="lr_final"):
        _cfg(lr_final=0.0)


def test_text_reward_never_prefers_harmful_answer(tiny_lm, head_dir):
    """The sign the CRAFT public code got wrong: a refusal earns more text reward than compliance."""
    reward = CraftReward(SafetyHead.load(head_dir), KeywordRefusalJudge(), source="reference")
    parts = reward(tiny_lm.model, tiny_lm.tokenizer, ["How do I make a weapon?"] * 2,
                   ["I'm sorry, but I can't help with that.", "Sure, step 1: get the parts."], tiny_lm.device)
    assert parts["r_txt"][0] > parts["r_txt"][1]
    assert parts["r_txt"][0] > 0 > parts["r_txt"][1]


def test_single_update_path_trains(tiny_model_dir, head_dir, tmp_path):
    """One epoch with all minibatches accumulated skips the old-logprob forward and still learns."""
    from components.rl.loop import single_update

    cfg = _cfg(steps=2, ppo_epochs=1, minibatch_size=2, grad_accum=3)
    assert single_update(cfg, 6) and not single_update(_cfg(ppo_epochs=2), 6)
    assert not single_update(_cfg(grad_accum=2), 6)  # 3 minibatches, 2 optimizer steps: the ratio moves
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "out", tmp_path / "ckpt")
    adapter = _last_checkpoint_adapter(tmp_path / "ckpt")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_rl_step_moves_adapter_not_base(tiny_model_dir, head_dir):
    """In memory: one RL update changes LoRA weights and leaves every base weight bit-identical."""
    from accelerate import Accelerator

    from components.lm import runtime
    from components.lm import source as model_source
    from components.rl import loop as rl_loop
    from components.rl.policy import wrap_lora

    cfg = _cfg(steps=1, lr=1e-2)
    model_cfg = _model(tiny_model_dir)
    lm = runtime.load(model_source.resolve(model_cfg), model_cfg)
    policy = wrap_lora(lm.model, cfg.lora, 0)
    base_before = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" not in k}
    lora_before = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" in k}
    value_head = rl_loop.ValueHead(32)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    reward = CraftReward(SafetyHead.load(head_dir), KeywordRefusalJudge())
    pools = {"harmful": list(PROMPTS.prompt[:4]), "benign": ["Bake bread?"]}
    metrics = rl_loop.rl_step(cfg, 0, policy, lm.tokenizer, value_head, opt, Accelerator(cpu=True), reward,
                              pools, torch.Generator().manual_seed(0))
    assert {"rl/flat_groups", "rl/text_over_refusal", "rl/reward_benign"} <= set(metrics)
    after = dict(policy.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())


def test_checkpoint_key_tracks_compute_dtype():
    """A bf16 run never resumes a float32 run's checkpoints (and vice versa)."""
    from components.train_rl import compute_dtype

    assert compute_dtype(ModelConfig(dtype="float32", device="cpu")) == "torch.float32"
    assert compute_dtype(ModelConfig(dtype="bfloat16", device="cpu")) == "torch.bfloat16"


def test_checkpoint_key_tracks_generation_engine():
    """Engines draw different samples from one seed: a run never resumes another engine's."""
    from components.train_rl import numerics

    ours, hf = (numerics(ModelConfig(dtype="float32", device="cpu", engine=e)) for e in ("ours", "hf"))
    assert ours != hf and ours.startswith("torch.float32")


def test_auto_dtype_is_bf16_only_where_native(monkeypatch):
    from components.lm import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert runtime.pick_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert runtime.pick_dtype("auto", cpu) == torch.bfloat16


def test_checkpoint_key_tracks_the_code_rl_runs(monkeypatch, tmp_path, head_dir):
    """checkpoint_dir changes when a file of train_rl's import closure changes (a judge, the
    decode loop), and only then: changed RL code never resumes checkpoints the old code wrote."""
    import shutil

    from components import train_rl
    from components.core import code

    copy = tmp_path / "components"
    shutil.copytree(code.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code, "PACKAGE_DIR", copy)
    cfg, model_cfg = TrainRLConfig(), ModelConfig(dtype="float32", device="cpu")
    key = lambda: train_rl.checkpoint_dir(tmp_path, cfg, model_cfg, "fp", head_dir)  # noqa: E731
    before = key()
    (copy / "registry" / "serving.py").write_text("# not imported by train_rl\n", encoding="utf-8")
    assert key() == before
    for changed in ("eval/judges.py", "lm/decode.py", "rl/loop.py"):
        (copy / changed).write_text((copy / changed).read_text() + "\n# changed\n", encoding="utf-8")
        assert key() != before, changed
        before = key()


def test_wrap_lora_seeds_without_touching_the_global_rng(tiny_model_dir):
    """A seed gives one adapter init, drawn in a forked RNG: the process RNG is as before the
    call. ``seed=None`` draws from the caller's global RNG (after manual_seed(s): the seed-s init)."""
    from components.lm import runtime
    from components.lm import source as model_source
    from components.rl.policy import LoraSpec, wrap_lora

    model_cfg = _model(tiny_model_dir)

    def lora(seed, global_seed=123) -> dict:
        model = runtime.load(model_source.resolve(model_cfg), model_cfg).model  # wrap_lora wraps in place
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        policy = wrap_lora(model, LoraSpec(r=4, alpha=8), seed)
        assert torch.equal(torch.get_rng_state(), before) == (seed is not None)
        return {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" in k}

    first = lora(0)
    assert first and any(v.abs().sum() > 0 for k, v in first.items() if "lora_A" in k)
    for other in (lora(0), lora(0, global_seed=7), lora(None, global_seed=0)):
        assert other.keys() == first.keys() and all(torch.equal(other[k], v) for k, v in first.items())
    assert any(not torch.equal(lora(1)[k], v) for k, v in first.items() if "lora_A" in k)
