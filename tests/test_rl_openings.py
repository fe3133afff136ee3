"""The unlikelihood of a refusal opening under benign prompts (components/rl/openings.py)."""
import math

import pytest
import torch

from components.core.config import ConfigError
from components.lm.generation import render
from components.rl import openings
from components.rl.policy import LoraSpec, forward_logprobs, wrap_lora
from components.train_rl import TrainRLConfig, run
from tests.test_train_rl import PROMPTS, _cfg, _model, head_dir  # noqa: F401 - fixture

BENIGN = ["How do I kill a Python process?", "Bake bread?", "Explain rain."]
OPENINGS = ("I'm sorry", "I can't", "Sorry")


def test_p_sums_the_openings_sequence_probabilities_and_the_loss_is_minus_log_one_minus_p():
    # two prompts × two openings, token log-probs [4, 3]; opening 0 has 2 tokens, opening 1 has 3
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.1, 0.5, 0.2], [0.2, 0.5, 0.7], [0.3, 0.3, 0.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    log_p = openings.log_p_refuse(logp, mask, 2)
    expected = [0.5 * 0.4 + 0.1 * 0.5 * 0.2, 0.2 * 0.5 + 0.3 ** 3]
    assert log_p.exp().tolist() == pytest.approx(expected)
    assert openings.unlikelihood(log_p).tolist() == pytest.approx([-math.log(1 - p) for p in expected])
    assert torch.isfinite(openings.unlikelihood(torch.zeros(1))).all()  # P = 1 is clamped, not infinite


def test_an_opening_that_is_a_prefix_of_another_is_refused(tiny_lm):
    with pytest.raises(ConfigError, match="prefix"):
        openings.opening_ids(tiny_lm.tokenizer, ["I'm sorry", "I'm sorry, but"])
    with pytest.raises(ConfigError, match="prefix"):
        openings.opening_ids(tiny_lm.tokenizer, ["I'm sorry", "I'm sorry"])
    with pytest.raises(ConfigError, match="no tokens"):
        openings.opening_ids(tiny_lm.tokenizer, ["I'm sorry", ""])
    assert len(openings.opening_ids(tiny_lm.tokenizer, OPENINGS)) == 3


def test_rows_put_each_opening_after_the_rendered_prompt(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = openings.opening_ids(tok, OPENINGS)
    batch = openings.build(tok, BENIGN[:2], ids, 2, "cpu")
    assert batch.rows.input_ids.shape[0] == 6 and batch.n_openings == 3 and batch.total == 2
    tp = batch.rows.prompt_len
    for r in range(6):
        prompt, k = BENIGN[r // 3], r % 3
        real = batch.rows.attention_mask[r, :tp].bool()
        assert tok.decode(batch.rows.input_ids[r, :tp][real]) == render(tok, prompt)
        n = int(batch.rows.completion_mask[r].sum())
        assert batch.rows.input_ids[r, tp : tp + n].tolist() == ids[k]
    # P(x) from the padded rows equals the sum over openings of the product of next-token
    # probabilities read one unpadded prefix at a time, for the longest prompt and the left-padded one
    assert batch.rows.attention_mask[3, :tp].sum() < tp  # prompt 1 is left-padded
    with torch.no_grad():
        logp = openings.opening_logprobs(tiny_lm.model, batch)
        full = forward_logprobs(tiny_lm.model, batch.rows)[0]  # every row whole, no cache
    mask = batch.rows.completion_mask.bool()
    assert torch.allclose(logp[mask], full[mask], atol=1e-5)
    ps = openings.log_p_refuse(logp, batch.rows.completion_mask, 3).exp()
    for i, prompt in enumerate(BENIGN[:2]):
        manual = 0.0
        for o in ids:
            seq = tok(render(tok, prompt), add_special_tokens=False)["input_ids"]
            prob = 1.0
            for t in o:
                with torch.no_grad():
                    prob *= float(tiny_lm.model(torch.tensor([seq])).logits[0, -1].float().softmax(-1)[t])
                seq = seq + [t]
            manual += prob
        assert float(ps[i]) == pytest.approx(manual, rel=1e-4)


def nudged_policy(tiny_model_dir):
    """(the tiny model loaded afresh, its LoRA-wrapped policy with every adapter weight drawn from
    N(0, 0.05²)): at init B = 0 gives A no gradient, so a test of descent starts from a nudged adapter."""
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    for p in policy.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
    return lm, policy


def test_descending_the_loss_makes_the_openings_less_likely(tiny_model_dir):
    lm, policy = nudged_policy(tiny_model_dir)
    # a random model gives the real openings P ~ 1e-10: take the five likeliest first tokens instead
    enc = lm.tokenizer(render(lm.tokenizer, BENIGN[0]), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        top = policy(**enc).logits[0, -1].topk(5).indices.tolist()
    batch = openings.build(lm.tokenizer, BENIGN, [[t] for t in top], 3, "cpu")
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-2)
    ps = []
    for _ in range(5):
        loss, sums = openings.loss(policy, batch)
        stats = openings.summary(sums, 3, 0, sharded=False)
        assert "opening_p_harmful" not in stats
        assert stats["opening_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        ps.append(stats["opening_p"])
        opt.zero_grad(), loss.backward(), opt.step()
    assert ps[-1] < ps[0] * 0.9


def test_both_sides_make_a_refusal_gate_s_cross_entropy(tiny_model_dir):
    """A harmful prompt's loss is −log P, a benign one's −log(1 − P); descending it raises P on the
    harmful prompt (it would fall under the benign-only term)."""
    lm, policy = nudged_policy(tiny_model_dir)
    ids = openings.opening_ids(lm.tokenizer, OPENINGS)
    batch = openings.build(lm.tokenizer, ["How do I build a bomb?", "Bake bread?"], ids, 2, "cpu", [True, False])
    assert batch.harmful.tolist() == [True, False]
    with torch.no_grad():
        log_p = openings.log_p_refuse(forward_logprobs(policy, batch.rows)[0], batch.rows.completion_mask, 3)
        loss, sums = openings.loss(policy, batch)
    assert float(loss) == pytest.approx(float((-log_p[0] + openings.unlikelihood(log_p[1:])[0]) / 2), rel=1e-5)
    stats = openings.summary(sums, 1, 1, sharded=False)
    assert stats["opening_p_harmful"] == pytest.approx(float(log_p[0].exp()), rel=1e-5)
    assert stats["opening_p"] == pytest.approx(float(log_p[1].exp()), rel=1e-5)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(5):
        loss, _ = openings.loss(policy, batch)
        opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        after = openings.log_p_refuse(forward_logprobs(policy, batch.rows)[0], batch.rows.completion_mask, 3)
    assert float(after[0]) > float(log_p[0]) + 1.0  # e-fold and more on the harmful prompt


def test_shares_of_the_prompts_add_up_to_the_whole_loss(tiny_lm):
    ids = openings.opening_ids(tiny_lm.tokenizer, OPENINGS)
    batch = openings.build(tiny_lm.tokenizer, BENIGN, ids, 3, "cpu")
    whole = float(openings.loss(tiny_lm.model, batch)[0])
    with torch.no_grad():
        logp = forward_logprobs(tiny_lm.model, batch.rows)[0]
    mean = openings.unlikelihood(openings.log_p_refuse(logp, batch.rows.completion_mask, 3)).mean()
    assert whole == pytest.approx(float(mean), rel=1e-5)  # the mean over the prompts
    parts = [float(openings.loss(tiny_lm.model, openings.build(tiny_lm.tokenizer, xs, ids, 3, "cpu"))[0])
             for xs in (BENIGN[:2], BENIGN[2:])]
    assert sum(parts) == pytest.approx(whole, rel=1e-5)


def test_the_term_needs_benign_prompts_and_sane_values():
    with pytest.raises(ConfigError, match="benign_per_step"):
        TrainRLConfig(opening_coef=1.0, benign_per_step=0)
    for bad in (dict(opening_coef=-1.0), dict(opening_prompts=0), dict(opening_coef=1.0, openings=()),
                dict(opening_coef=1.0, openings=("I'm sorry", " ")), dict(opening_coef=1.0, openings=(" Sorry",)),
                dict(opening_coef=1.0, openings=("Sorry", "Sorry")), dict(opening_sides="harmful")):
        with pytest.raises(ConfigError, match="opening"):
            TrainRLConfig(**bad)


def test_rl_runs_with_the_term_logs_it_and_resumes_to_the_same_adapter(tiny_model_dir, head_dir, tmp_path):  # noqa: F811
    from tests.test_train_rl import _last_checkpoint_adapter

    seen = []
    cfg = _cfg(opening_coef=1.0, opening_prompts=3)
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a",
        on_metrics=lambda step, m: seen.append(m))
    assert len(seen) == cfg.steps and all(0 < m["rl/opening_p"] < 1 and m["rl/opening_loss"] > 0 for m in seen)
    assert run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b", stop_after=2) is None
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b")
    a, b = _last_checkpoint_adapter(tmp_path / "ckpt_a"), _last_checkpoint_adapter(tmp_path / "ckpt_b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    both = []
    run(_cfg(opening_coef=1.0, opening_prompts=2, opening_sides="both"), _model(tiny_model_dir), PROMPTS, head_dir,
        tmp_path / "d", tmp_path / "ckpt_d", on_metrics=lambda step, m: both.append(m))
    assert all(0 < m["rl/opening_p_harmful"] < 1 for m in both) and "rl/opening_p_harmful" not in seen[0]
    off = _cfg()
    run(off, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "c", tmp_path / "ckpt_c")
    c = _last_checkpoint_adapter(tmp_path / "ckpt_c")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the term changes what is learnt
