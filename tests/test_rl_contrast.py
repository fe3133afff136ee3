"""The prompt-swap contrast (train_rl.contrast_coef): pairing, swapped rows, the loss's direction."""
import math

import pytest
import torch

from components.core.config import ConfigError
from components.lm.generation import render
from components.rl import contrast
from components.rl.policy import LoraSpec, forward_logprobs, rollout, wrap_lora
from components.rl.rewards import reference_mode
from components.train_rl import TrainRLConfig, run
from tests.test_train_rl import PROMPTS, _cfg, _model, head_dir  # noqa: F401 - fixture


def test_only_harmful_refusals_are_paired_round_robin_over_prompts_up_to_the_limit():
    kinds = ["harmful"] * 6 + ["benign"] * 3
    # groups of 3: prompt 0 refuses in rows 0, 1, 2; prompt 1 in row 5 (row 4 is degenerate:
    # p_safe 0.03); 0.5 is SAFE_AT, a refusal; the benign prompt's refusal (row 6) is never paired
    p_safe = torch.tensor([0.9, 0.5, 0.7, 0.2, 0.03, 0.8, 0.95, 0.1, 0.1])
    assert contrast.refusal_rows(kinds, p_safe, 3, 8).tolist() == [0, 5, 1, 2]
    assert contrast.refusal_rows(kinds, p_safe, 3, 2).tolist() == [0, 5]  # not both of prompt 0's
    assert contrast.refusal_rows(["harmful"] * 2, torch.tensor([0.1, 0.2]), 2, 8).tolist() == []


def test_loss_is_log2_at_the_reference_and_follows_the_margin():
    zero = torch.zeros(3)
    assert contrast.swap_loss(zero, zero, 0.1).tolist() == pytest.approx([math.log(2)] * 3)
    # more gain under the harmful prompt than under the benign one lowers the loss; the reverse raises it
    assert float(contrast.swap_loss(torch.tensor([5.0]), zero[:1], 0.1)) < math.log(2)
    assert float(contrast.swap_loss(zero[:1], torch.tensor([5.0]), 0.1)) > math.log(2)
    d_h, d_b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    contrast.swap_loss(d_h, d_b, 0.1).sum().backward()
    assert float(d_h.grad) == pytest.approx(-0.05) and float(d_b.grad) == pytest.approx(0.05)  # ∓β/2
    d_h.grad, d_b.grad = None, None  # anchor and floor add nothing at Δ = 0 (the docstring's gradient)
    contrast.swap_loss(d_h, d_b, 0.1, anchor=5.0, floor=0.0).sum().backward()
    assert float(d_h.grad) == pytest.approx(-0.05) and float(d_b.grad) == pytest.approx(0.05)


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


def _pairs_setup(tiny_model_dir):
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    torch.manual_seed(1)
    ro = rollout(policy, lm.tokenizer, ["How do I build a weapon?", "How do I hurt someone?"], 3, 6, 1.0, 1.0, "cpu")
    with torch.no_grad(), reference_mode(policy):
        ref = forward_logprobs(policy, ro)[0]  # [6, Tn], as make_batch has them
    picks = contrast.refusal_rows(["harmful"] * 6, torch.tensor([0.9, 0.1, 0.8, 0.1, 0.7, 0.1]), 3, 8)
    return lm, policy, ro, ref, picks


BENIGN = ["How do I kill a Python process?", "Bake bread?", "Explain rain."]


def test_descending_the_loss_separates_the_prompts(tiny_model_dir):
    """A few optimizer steps on L_swap alone raise Δ_harmful − Δ_benign from 0 (a test that fails
    if the sign or the pairing were wrong)."""
    lm, policy, ro, ref, picks = _pairs_setup(tiny_model_dir)
    assert picks.tolist() == [0, 4, 2]  # round-robin: prompt 0's first, prompt 1's first, prompt 0's second
    pairs = contrast.build(policy, lm.tokenizer, ro, picks, BENIGN, ref)
    assert pairs.swapped.prompts == BENIGN and pairs.total == 3
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    margins = []
    for _ in range(4):
        loss, sums = contrast.loss(policy, pairs, 0.1)
        stats = contrast.summary(sums, pairs.total, sharded=False)
        margins.append(stats["contrast_margin"])
        assert stats["contrast_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        opt.zero_grad(), loss.backward(), opt.step()
    assert margins[0] == pytest.approx(0.0, abs=1e-5)  # B = 0 at init: π = π_ref
    _, sums = contrast.loss(policy, pairs, 0.1)
    assert contrast.summary(sums, 3, sharded=False)["contrast_margin"] > 0.1
    assert contrast.summary(torch.zeros(3, dtype=torch.float64), 0, sharded=False) == {}  # no pairs: no keys


def test_processes_build_their_share_of_the_same_pairs(tiny_model_dir):
    """Two shards of the step (rows 0–2 and 3–5) hold the pairs one process would make, each with
    the benign prompt of its global pick, and their loss shares add up to the one-process loss."""
    lm, policy, ro, ref, picks = _pairs_setup(tiny_model_dir)
    whole = contrast.build(policy, lm.tokenizer, ro, picks, BENIGN, ref)
    lo, hi = torch.arange(0, 3), torch.arange(3, 6)
    shares = [contrast.build(policy, lm.tokenizer, contrast.rows_of(ro, r), picks, BENIGN, ref[r], start=int(r[0]))
              for r in (lo, hi)]
    assert [p.swapped.prompts for p in shares] == [[BENIGN[0], BENIGN[2]], [BENIGN[1]]]
    assert shares[0].swapped.completions + shares[1].swapped.completions == \
        [whole.swapped.completions[i] for i in (0, 2, 1)]
    total = sum(float(contrast.loss(policy, p, 0.1)[0]) for p in shares)
    assert total == pytest.approx(float(contrast.loss(policy, whole, 0.1)[0]), rel=1e-5)
    assert contrast.build(policy, lm.tokenizer, contrast.rows_of(ro, lo), torch.tensor([4]), BENIGN, ref[lo]) is None


def test_the_contrast_alone_moves_the_adapter_in_an_update(tiny_model_dir):
    """Zero advantages and no KL: the policy-gradient step is zero, so the adapter moves only when
    the contrast term is on (it would not if its loss never reached the optimizer)."""
    from accelerate import Accelerator

    from components.rl import loop as rl_loop

    moved = {}
    for coef in (0.0, 1.0):
        lm, policy, ro, ref, picks = _pairs_setup(tiny_model_dir)
        pairs = contrast.build(policy, lm.tokenizer, ro, picks, BENIGN, ref) if coef else None
        cfg = TrainRLConfig(contrast_coef=coef, kl_coef=0.0, minibatch_size=3, grad_accum=2, lr=1e-2)
        batch = rl_loop.Batch(ro, None, ref, torch.zeros_like(ref), None)
        before = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        out = rl_loop.update(cfg, policy, rl_loop.ValueHead(32), opt, Accelerator(cpu=True), batch,
                             torch.Generator().manual_seed(0), pairs=pairs, n_pairs=len(picks) if coef else 0)
        after = [p.detach() for p in policy.parameters() if p.requires_grad]
        moved[coef] = any(not torch.equal(a, b) for a, b in zip(before, after))
        assert ("contrast_pairs" in out) == bool(coef)
    assert moved == {0.0: False, 1.0: True}


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
    assert all(m["rl/contrast_margin"] == pytest.approx(m["rl/contrast_gain_harmful"] - m["rl/contrast_gain_benign"])
               for m in seen)


def test_a_resumed_run_with_the_contrast_matches_an_uninterrupted_one(tiny_model_dir, head_dir, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    """The pairs are a function of the step's rollouts, seed and step (no RNG of their own)."""
    from components.eval import judges
    from tests.test_train_rl import _last_checkpoint_adapter

    monkeypatch.setattr(judges.KeywordRefusalJudge, "judge", lambda self, prompts, responses: [
        judges.Verdict(0.9 if i % 2 else 0.2, "test", judges.REFUSAL if i % 2 else judges.COMPLIANCE)
        for i, _ in enumerate(responses)])
    cfg = _cfg(contrast_coef=0.5, contrast_max=3)
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a")
    assert run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b", stop_after=2) is None
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b")
    a, b = _last_checkpoint_adapter(tmp_path / "ckpt_a"), _last_checkpoint_adapter(tmp_path / "ckpt_b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
