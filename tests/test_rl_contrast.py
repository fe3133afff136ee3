"""The prompt-swap contrast (train_rl.contrast_coef): pairing, swapped rows, the loss's direction."""
import math

import pytest
import torch

from components.core.config import ConfigError
from components.lm.generation import render
from components.rl import contrast
from components.rl.policy import LoraSpec, Rollout, forward_logprobs, rollout, wrap_lora
from components.train_rl import TrainRLConfig, run
from tests.test_train_rl import PROMPTS, _cfg, _model, head_dir  # noqa: F401 - fixture


def test_only_harmful_refusals_are_paired_up_to_the_limit():
    kinds = ["harmful", "harmful", "harmful", "benign", "harmful", "harmful"]
    p_safe = torch.tensor([0.9, 0.2, 0.5, 0.95, 0.03, 0.7])  # 0.5 is SAFE_AT: a refusal; 0.03: degenerate
    assert contrast.refusal_rows(kinds, p_safe, 8).tolist() == [0, 2, 5]
    assert contrast.refusal_rows(kinds, p_safe, 2).tolist() == [0, 2]
    assert contrast.refusal_rows(["harmful"], torch.tensor([0.1]), 8).tolist() == []


def test_loss_is_log2_at_the_reference_and_follows_the_margin():
    zero = torch.zeros(3)
    assert contrast.swap_loss(zero, zero, 0.1).tolist() == pytest.approx([math.log(2)] * 3)
    # more gain under the harmful prompt than under the benign one lowers the loss; the reverse raises it
    assert float(contrast.swap_loss(torch.tensor([5.0]), zero[:1], 0.1)) < math.log(2)
    assert float(contrast.swap_loss(zero[:1], torch.tensor([5.0]), 0.1)) > math.log(2)
    d_h, d_b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    contrast.swap_loss(d_h, d_b, 0.1).sum().backward()
    assert float(d_h.grad) == pytest.approx(-0.05) and float(d_b.grad) == pytest.approx(0.05)  # ∓β/2


def test_the_anchor_charges_a_refusal_made_less_likely_than_the_reference():
    d_b = torch.tensor([-6.0, -6.0])
    plain = contrast.swap_loss(torch.tensor([-2.0, 2.0]), d_b, 0.5)
    anchored = contrast.swap_loss(torch.tensor([-2.0, 2.0]), d_b, 0.5, anchor=5.0)
    assert float(anchored[0]) > float(plain[0])  # Δ_h < 0: charged 5·2 nats of margin
    assert float(anchored[1]) == pytest.approx(float(plain[1]))  # Δ_h > 0: unchanged


def test_the_floor_gives_nothing_for_pushing_the_benign_side_below_it():
    d_h = torch.tensor([1.0, 1.0])
    floored = contrast.swap_loss(d_h, torch.tensor([-5.0, 2.0]), 1.0, floor=0.0)
    assert float(floored[0]) == pytest.approx(float(contrast.swap_loss(d_h[:1], torch.zeros(1), 1.0)))
    assert float(floored[1]) == pytest.approx(float(contrast.swap_loss(d_h[:1], torch.tensor([2.0]), 1.0)))
    d_b = torch.tensor([-1.0, 1.0], requires_grad=True)
    contrast.swap_loss(d_h, d_b, 1.0, floor=0.0).sum().backward()
    assert float(d_b.grad[0]) == 0.0 and float(d_b.grad[1]) > 0  # below the floor: no push down


def test_log_ratio_sums_generated_tokens_only():
    logp, ref = torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    assert contrast.log_ratio(logp, ref, torch.tensor([[1, 1, 0]])).tolist() == [pytest.approx(-0.5)]


def test_swapped_rows_keep_the_completion_tokens_under_the_new_prompt(tiny_lm):
    tok = tiny_lm.tokenizer
    torch.manual_seed(0)
    ro = rollout(tiny_lm.model, tok, ["How do I pick a lock?", "Explain rain."], 2, 5, 1.0, 1.0, "cpu")
    idx = torch.tensor([1, 2])
    swapped = contrast.swap_prompts(ro, idx, ["Bake bread?", "What is a kill command in Linux?"], tok)
    assert torch.equal(swapped.input_ids[:, swapped.prompt_len:], ro.input_ids[idx, ro.prompt_len:])
    assert torch.equal(swapped.completion_mask, ro.completion_mask[idx])
    assert swapped.prompts == ["Bake bread?", "What is a kill command in Linux?"]
    real = swapped.attention_mask[0, : swapped.prompt_len].bool()  # left padding, then the rendered prompt
    assert tok.decode(swapped.input_ids[0, : swapped.prompt_len][real]) == render(tok, "Bake bread?")
    ref = forward_logprobs(tiny_lm.model, contrast.rows_of(ro, idx))[0]
    assert not torch.allclose(forward_logprobs(tiny_lm.model, swapped)[0], ref)  # the prompt matters


def test_descending_the_loss_separates_the_prompts(tiny_model_dir):
    """A few optimizer steps on L_swap alone raise Δ_harmful − Δ_benign from 0 (a test that fails
    if the sign or the pairing were wrong)."""
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    torch.manual_seed(1)
    ro = rollout(policy, lm.tokenizer, ["How do I build a weapon?"], 3, 6, 1.0, 1.0, "cpu")
    pairs = contrast.build(policy, lm.tokenizer, ro, ["harmful"] * 3, torch.tensor([0.9, 0.1, 0.8]),
                           ["How do I kill a Python process?", "Bake bread?"], 8)
    assert pairs.swapped.prompts == ["How do I kill a Python process?", "Bake bread?"]  # rows 0 and 2
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    margins = []
    for _ in range(4):
        loss, stats = contrast.loss(policy, pairs, 0.1)
        margins.append(stats["margin"])
        assert stats["margin"] == pytest.approx(stats["gain_harmful"] - stats["gain_benign"], abs=1e-5)
        opt.zero_grad(), loss.backward(), opt.step()
    assert margins[0] == pytest.approx(0.0, abs=1e-5)  # B = 0 at init: π = π_ref
    assert contrast.loss(policy, pairs, 0.1)[1]["margin"] > 0.1


def test_contrast_needs_benign_prompts_and_sane_values():
    with pytest.raises(ConfigError, match="benign_per_step"):
        TrainRLConfig(contrast_coef=0.5, benign_per_step=0)
    for bad in (dict(contrast_coef=-1.0), dict(contrast_beta=0.0), dict(contrast_max=0), dict(contrast_anchor=-1.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainRLConfig(**bad)


def test_rl_runs_with_the_contrast_and_logs_it(tiny_model_dir, head_dir, tmp_path, monkeypatch):  # noqa: F811
    """Every harmful rollout is called a refusal (p_safe 0.9), so each step pairs min(4, 8) rows."""
    from components.eval import judges

    monkeypatch.setattr(judges.KeywordRefusalJudge, "judge", lambda self, prompts, responses: [
        judges.Verdict(0.9, "test", judges.REFUSAL) for _ in responses])
    seen = []
    cfg = _cfg(steps=2, contrast_coef=0.5)
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "out", tmp_path / "ckpt",
        on_metrics=lambda step, m: seen.append(m))
    assert [m["rl/contrast_pairs"] for m in seen] == [4.0, 4.0]
    assert all(m["rl/contrast_loss"] > 0 for m in seen)
