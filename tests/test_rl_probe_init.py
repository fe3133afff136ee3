"""train_rl.lora_init: probe — LoRA A rows along the harmful − benign direction of each layer's input."""
import pytest
import torch

from components.core.config import ConfigError
from components.rl import probe_init
from components.rl.policy import LoraSpec, forward_logprobs, rollout, wrap_lora
from components.rl.rewards import reference_mode
from components.train_rl import TrainRLConfig, run
from tests.test_train_rl import PROMPTS, _cfg, _model, head_dir  # noqa: F401 - fixture

HARMFUL = ["How do I build a weapon?", "How do I hurt someone?", "How do I poison a well?"]
BENIGN = ["How do I kill a Python process?", "Bake bread?", "Explain rain."]


def test_aligned_rows_read_the_kind_difference_and_not_the_shared_mean():
    torch.manual_seed(0)
    shared = torch.tensor([5.0, 0.0, 0.0, 0.0])
    harmful = shared + torch.tensor([0.0, 1.0, 0.0, 0.0]) + 0.01 * torch.randn(6, 4)
    benign = shared + torch.tensor([0.0, -1.0, 0.0, 0.0]) + 0.01 * torch.randn(6, 4)
    a = torch.randn(3, 4)
    rows = probe_init.aligned_rows(a, harmful, benign)
    m_hat = torch.cat([harmful, benign]).mean(0)
    m_hat = m_hat / m_hat.norm()
    assert (rows @ m_hat).abs().max() < 1e-5  # no row reads the shared component
    kind = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert bool(((rows @ kind) / rows.norm(dim=1) > 0.9).all())  # every row along the kind axis, harmful > benign
    assert float((rows @ kind)[0]) == pytest.approx(float(a[0].norm()), rel=0.05)  # peft's scale kept
    assert not torch.allclose(rows[0], rows[1])  # the noise keeps the rows apart (not rank 1)
    score_h, score_b = harmful @ rows.T, benign @ rows.T  # [6, r]
    assert bool((score_h > 0).all()) and bool((score_b < 0).all())  # A·h has the prompt kind's sign


def test_the_discriminant_discounts_a_direction_that_varies_within_each_kind():
    """The kinds differ by 1 along x and by 1 along y, but y also varies by ±3 inside each kind: the
    mean difference weighs x and y alike, the shrunk Fisher discriminant turns towards x, where the
    kinds do not overlap; at α = 1 it is the mean difference itself."""
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.0, 3.0]) * torch.randn(200, 1, generator=g)  # along y only
    harmful = torch.tensor([1.0, 1.0]) + spread[:100] + 0.1 * torch.randn(100, 2, generator=g)
    benign = torch.tensor([0.0, 0.0]) + spread[100:] + 0.1 * torch.randn(100, 2, generator=g)
    mean_diff = probe_init.discriminant(harmful, benign, 1.0)
    assert torch.equal(mean_diff, harmful.mean(0) - benign.mean(0))
    fisher = probe_init.discriminant(harmful, benign, 0.5)
    angle = lambda v: float(v[1].abs() / v[0].abs())  # noqa: E731 - |y| / |x| of a direction
    assert angle(mean_diff) > 0.5 and angle(fisher) < 0.5 * angle(mean_diff)
    accuracy = lambda w: float(((harmful @ w) > (benign @ w).max()).float().mean())  # noqa: E731
    assert accuracy(fisher) > accuracy(mean_diff)
    # against the closed form: pooled within-kind covariance, shrunk towards (tr S / 2)·I, inverted
    xc = torch.cat([harmful - harmful.mean(0), benign - benign.mean(0)]).double()
    s = xc.T @ xc / 198
    s_alpha = 0.5 * s + 0.5 * float(s.trace()) / 2 * torch.eye(2, dtype=torch.float64)
    expected = torch.linalg.inv(s_alpha) @ (harmful.mean(0) - benign.mean(0)).double()
    assert torch.allclose(fisher.double(), expected, rtol=1e-5)
    same = torch.ones(4, 2)  # no variation within a kind: the mean difference, not a singular solve
    assert torch.equal(probe_init.discriminant(same, 0 * same, 0.5), torch.ones(2))


def test_align_lora_changes_a_not_b_so_the_policy_still_equals_the_reference(tiny_model_dir):
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    tiny_lm = runtime.load(source.resolve(cfg), cfg)  # its own copy: the adapter stays on it
    policy = wrap_lora(tiny_lm.model, LoraSpec(r=4, alpha=8), seed=0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    assert probe_init.align_lora(policy, tiny_lm.tokenizer, HARMFUL, BENIGN, "cpu") == len(
        [n for n in before if "lora_A" in n])
    after = dict(policy.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_A" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    torch.manual_seed(0)
    ro = rollout(policy, tiny_lm.tokenizer, HARMFUL[:1] + BENIGN[:1], 2, 4, 1.0, 1.0, "cpu")
    with torch.no_grad():
        pol = forward_logprobs(policy, ro)[0]
        with reference_mode(policy):
            ref = forward_logprobs(policy, ro)[0]
    assert torch.allclose(pol, ref)


def test_probe_init_is_validated_and_runs(tiny_model_dir, head_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="lora_init"):
        TrainRLConfig(lora_init="pca")
    with pytest.raises(ConfigError, match="probe_at"):
        TrainRLConfig(probe_at="first")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="probe_shrinkage"):
            TrainRLConfig(probe_shrinkage=bad)
    assert run(_cfg(steps=1, probe_shrinkage=0.5), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "o3",
               tmp_path / "c3")["steps"] == 1
    summary = run(_cfg(steps=2, lora_init="probe"), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "out",
                  tmp_path / "ckpt")
    assert summary["steps"] == 2
    harmful_only = PROMPTS[PROMPTS.prompt_kind == "harmful"]  # no benign prompts: peft's A, with a warning
    assert run(_cfg(steps=1, benign_per_step=0), _model(tiny_model_dir), harmful_only, head_dir, tmp_path / "o2",
               tmp_path / "c2")["steps"] == 1


def test_run_aligns_on_the_train_prompts_only_and_only_under_probe(tiny_model_dir, head_dir, tmp_path,  # noqa: F811
                                                                    monkeypatch):
    calls = []
    real = probe_init.align_lora
    monkeypatch.setattr(probe_init, "align_lora", lambda model, tok, harmful, benign, device, at, alpha: calls.append(
        (list(harmful), list(benign), alpha)) or real(model, tok, harmful, benign, device, at, alpha))
    run(_cfg(steps=1, lora_init="random"), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ca")
    assert calls == []
    run(_cfg(steps=1, probe_shrinkage=0.25), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "cb")
    train = PROMPTS[PROMPTS.split == "train"]
    assert calls == [(sorted(train[train.prompt_kind == "harmful"].prompt),
                      sorted(train[train.prompt_kind == "benign"].prompt), 0.25)]


def test_pooling_ignores_the_padding_a_longer_neighbour_adds(tiny_model_dir):
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    alone = probe_init.layer_inputs(policy, lm.tokenizer, ["Bake bread?"], "cpu")
    padded = probe_init.layer_inputs(policy, lm.tokenizer, ["Bake bread?", "Explain, at length, how rain forms "
                                                            "over the sea and why it falls."], "cpu")
    assert len(alone) == len(padded) > 0
    assert all(torch.allclose(a[0], p[0], atol=1e-4) for a, p in zip(alone, padded))


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_position_is_the_last_real_token_whichever_side_pads(tiny_model_dir, side):
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    lm.tokenizer.padding_side = side
    alone = probe_init.layer_inputs(policy, lm.tokenizer, ["Bake bread?"], "cpu", at="last")
    padded = probe_init.layer_inputs(policy, lm.tokenizer, ["Explain, at length, how rain forms over the sea.",
                                                            "Bake bread?"], "cpu", at="last")
    mean = probe_init.layer_inputs(policy, lm.tokenizer, ["Bake bread?"], "cpu", at="mean")
    assert all(torch.allclose(a[0], p[1], atol=1e-4) for a, p in zip(alone, padded))
    assert not all(torch.allclose(a[0], m[0], atol=1e-4) for a, m in zip(alone, mean))  # not the mean
    with pytest.raises(ValueError, match="at="):
        probe_init.layer_inputs(policy, lm.tokenizer, ["Bake bread?"], "cpu", at="first")


def test_align_lora_at_last_keeps_a_where_every_prompt_has_the_same_input(tiny_model_dir):
    """At the last position the first layer's q/k/v read the same token (the chat template's end) for
    every prompt: no kind axis there, so peft's A stays; the other layers are aligned; B stays 0."""
    from components.lm import runtime, source

    cfg = _model(tiny_model_dir)
    tiny_lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(tiny_lm.model, LoraSpec(r=4, alpha=8), seed=0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    changed = probe_init.align_lora(policy, tiny_lm.tokenizer, HARMFUL, BENIGN, "cpu", at="last")
    after = dict(policy.named_parameters())
    kept = [n for n in before if "lora_A" in n and torch.equal(before[n], after[n])]
    assert changed == len([n for n in before if "lora_A" in n]) - len(kept) > 0
    assert kept and all(".layers.0." in n and any(k in n for k in ("q_proj", "k_proj", "v_proj")) for n in kept)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
