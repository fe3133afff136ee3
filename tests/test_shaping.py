"""Dense latent rewards: the shaping formula by hand, per-position pooled states against ``pool``
and ``encode``, and the rollout-level rewards (policy vs frozen reference)."""
import pytest
import torch

from components.core.config import ConfigError
from components.head.model import SafetyHead
from components.lm.generation import render
from components.lm.latents import LatentSpec, backbone, encode, pool, prefix_pooled_states
from components.rl.policy import Rollout
from components.rl.shaping import dense_latent_rewards, potential_rewards

PROMPTS = ["How do I bake bread?", "Tell me a very long story about a dragon and a knight please", "Hi"]
TRACES = ["Mix flour and water.", "Once upon a time there was a dragon and a knight.", "Hello!"]


def test_potential_rewards_by_hand():
    phi = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.5, -1.0, 9.0, 9.0]])  # [2, 4]
    start = torch.tensor([0.0, 1.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1: two tokens, then padding
    r1 = potential_rewards(phi, start, mask, 1.0)
    assert r1.tolist() == [[1.0, 1.0, 2.0, 4.0], [-0.5, -1.5, 0.0, 0.0]]
    # telescoping: Σ r_t = Φ_last − Φ_start
    assert r1.sum(1).tolist() == [8.0 - 0.0, -1.0 - 1.0]
    r9 = potential_rewards(phi, start, mask, 0.9)
    want = torch.tensor([[0.9 - 0.0, 1.8 - 1.0, 3.6 - 2.0, 7.2 - 4.0], [0.45 - 1.0, -0.9 - 0.5, 0.0, 0.0]])
    torch.testing.assert_close(r9, want)
    with pytest.raises(ConfigError, match="gamma"):
        potential_rewards(phi, start, mask, 1.5)


def _rollout(tok, prompts, traces, device="cpu") -> Rollout:
    """What ``policy.rollout`` returns: left-padded rendered prompts, then completion ids + EOS,
    right-padded with pad (mask 0) after the EOS."""
    enc = tok([render(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    comp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in traces]
    tn = max(map(len, comp)) + 1  # at least one pad column
    new = torch.tensor([c + [tok.pad_token_id] * (tn - len(c)) for c in comp])
    cmask = torch.tensor([[1] * len(c) + [0] * (tn - len(c)) for c in comp])
    return Rollout(torch.cat([enc["input_ids"], new], 1).to(device),
                   torch.cat([enc["attention_mask"], cmask], 1).to(device), cmask.to(device),
                   enc["input_ids"].shape[1], list(prompts), list(traces))


def _reference_pool(model, ids, window, spec) -> torch.Tensor:
    """pool() of one unpadded row over the window positions [n_layers, d]."""
    with torch.inference_mode():
        out = backbone(model)(input_ids=ids[None], output_hidden_states=True, use_cache=False)
        hs = [out.last_hidden_state if spec.layers == (-1,) else out.hidden_states[i] for i in spec.layers]
        return torch.stack([pool(h.float(), window[None], spec.pooling)[0] for h in hs])


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
@pytest.mark.parametrize("pool_over", ["completion", "all"])
def test_prefix_states_equal_pool_of_every_prefix(tiny_lm, pooling, pool_over):
    """states[b, t] = pool() of row b cut after completion token t (its own unpadded forward);
    start = the prompt's pooled state (all) or zeros (completion); padding carries the last state."""
    spec = LatentSpec(layers=(1, -1), pooling=pooling, pool_over=pool_over)
    ro = _rollout(tiny_lm.tokenizer, PROMPTS, TRACES)
    states, start = prefix_pooled_states(tiny_lm.model, ro.input_ids, ro.attention_mask, ro.prompt_len,
                                         spec, tiny_lm.device)
    b, tn = ro.completion_mask.shape
    assert states.shape == (b, tn, 2, tiny_lm.model.config.hidden_size) and states.dtype == torch.float32
    tp = ro.prompt_len
    for i in range(b):
        real = ro.attention_mask[i].bool()
        n_prompt = int(real[:tp].sum())
        ids = ro.input_ids[i][real]  # prompt + completion, unpadded
        n = int(ro.completion_mask[i].sum())
        for t in range(n):
            window = torch.ones(n_prompt + t + 1, dtype=torch.long)
            if pool_over == "completion":
                window[:n_prompt] = 0
            want = _reference_pool(tiny_lm.model, ids[: n_prompt + t + 1], window, spec)
            torch.testing.assert_close(states[i, t], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(states[i, n:], states[i, n - 1].expand_as(states[i, n:]))
        if pool_over == "all":
            want = _reference_pool(tiny_lm.model, ids[:n_prompt], torch.ones(n_prompt, dtype=torch.long), spec)
            torch.testing.assert_close(start[i], want, atol=1e-5, rtol=1e-5)
    if pool_over == "completion":
        assert torch.count_nonzero(start) == 0


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
@pytest.mark.parametrize("pool_over", ["completion", "all"])
def test_last_prefix_state_equals_encode(tiny_lm, pooling, pool_over):
    """At the last completion token (before EOS) the state is what ``encode`` gives the whole text."""
    tok = tiny_lm.tokenizer
    spec = LatentSpec(layers=(0, -1), pooling=pooling, pool_over=pool_over)
    ro = _rollout(tok, PROMPTS, TRACES)
    for p, t in zip(PROMPTS, TRACES):  # precondition: joint tokenisation = prompt ids + trace ids
        assert tok(render(tok, p) + t, add_special_tokens=False)["input_ids"] == \
            tok(render(tok, p), add_special_tokens=False)["input_ids"] + tok(t, add_special_tokens=False)["input_ids"]
    states, _ = prefix_pooled_states(tiny_lm.model, ro.input_ids, ro.attention_mask, ro.prompt_len,
                                     spec, tiny_lm.device)
    last = ro.completion_mask.sum(1) - 2  # the EOS is the last masked token; the trace ends before it
    got = states[torch.arange(len(PROMPTS)), last]
    want = encode(tiny_lm.model, tok, PROMPTS, TRACES, spec, tiny_lm.device)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def lora_policy(tiny_model_dir):
    """A fresh tiny model with a non-zero LoRA adapter (wrap_lora wraps in place: not tiny_lm)."""
    from components.lm import runtime
    from components.lm import source as model_source
    from components.rl.policy import LoraSpec, wrap_lora

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    lm = runtime.load(model_source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return policy, lm.tokenizer


@pytest.mark.parametrize("pool_over", ["completion", "all"])
def test_dense_rewards_shape_padding_sources_and_telescoping(lora_policy, pool_over):
    """[B, Tn], 0 after EOS; policy ≠ reference once LoRA is non-zero; with γ = 1 the sum is the
    sequence-level R_lat (``rewards.latent_scores`` of the text) minus the prompt's potential."""
    policy, tok = lora_policy
    torch.manual_seed(0)
    head = SafetyHead(32, 16, 8, LatentSpec(pooling="mean", pool_over=pool_over)).eval()
    ro = _rollout(tok, PROMPTS, TRACES)
    pol = dense_latent_rewards(policy, ro, head, 1.0, "policy")
    ref = dense_latent_rewards(policy, ro, head, 1.0, "reference")
    assert pol.shape == ro.completion_mask.shape == ref.shape
    pad = ro.completion_mask == 0
    assert pad.any() and (pol[pad] == 0).all() and (ref[pad] == 0).all()
    assert (pol[~pad] != 0).all()
    assert not torch.allclose(pol, ref, atol=1e-4)
    # telescoping: Σ r_t = sequence-level R_lat of the text (EOS included) − Φ_{−1} of the prompt
    from components.rl.rewards import latent_scores

    texts = [t + tok.eos_token for t in TRACES]
    seq = latent_scores(policy, tok, head, PROMPTS, texts, "cpu", "reference")["r_lat"]
    prompt_only = latent_scores(policy, tok, head, PROMPTS, [""] * len(PROMPTS), "cpu", "reference")["r_lat"]
    phi_start = prompt_only if pool_over == "all" else torch.zeros(len(PROMPTS))
    torch.testing.assert_close(ref.sum(1), seq - phi_start, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense_latent_rewards(policy, ro, head, 0.9, "reference"), ref)


def test_dense_rewards_reject_unknown_source(lora_policy):
    policy, tok = lora_policy
    with pytest.raises(ConfigError, match="source"):
        dense_latent_rewards(policy, _rollout(tok, PROMPTS[:1], TRACES[:1]), SafetyHead(32, 16, 8), 1.0, "base")
