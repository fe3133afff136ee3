import pytest
import torch

from components.lm.latents import LatentSpec, encode, pool, tokenize_pairs

PROMPTS = ["How do I bake bread?", "Tell me a very long story about a dragon and a knight please", "Hi"]
TRACES = ["Mix flour and water.", "Once upon a time there was a dragon.", "Hello! How can I help you today?"]


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
@pytest.mark.parametrize("pool_over", ["completion", "all"])
def test_batched_equals_one_by_one(tiny_lm, pooling, pool_over):
    """Padding never leaks into the pooled vector."""
    spec = LatentSpec(layers=(-1, 1), pooling=pooling, pool_over=pool_over)
    batched = encode(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, TRACES, spec, tiny_lm.device)
    single = torch.cat([encode(tiny_lm.model, tiny_lm.tokenizer, [p], [t], spec, tiny_lm.device)
                        for p, t in zip(PROMPTS, TRACES)])
    assert batched.shape == (3, 2, tiny_lm.model.config.hidden_size)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pool_over", ["completion", "all"])
def test_completion_pooling_pools_only_completion_tokens(tiny_lm, pool_over):
    """pool_over="completion" pools exactly the trace's tokens. Prompts of different lengths, one
    trace: the pooled positions hold the trace's own ids, and at layer 0 (embeddings, no attention)
    the pooled vectors are equal. Deeper layers do see the prompt (causal attention), so they differ.
    pool_over="all" pools the prompt too: neither holds."""
    tok, trace = tiny_lm.tokenizer, TRACES[1]
    spec = LatentSpec(layers=(0, -1), pooling="mean", pool_over=pool_over)
    batch = tokenize_pairs(tok, PROMPTS, [trace] * 3, spec, tiny_lm.device)
    trace_ids = tok(trace, add_special_tokens=False)["input_ids"]
    pooled_ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["pool_mask"])]
    vecs = encode(tiny_lm.model, tok, PROMPTS, [trace] * 3, spec, tiny_lm.device)  # [3, 2, d]
    same_embedding = [torch.equal(vecs[0, 0], vecs[i, 0]) for i in (1, 2)]
    if pool_over == "completion":
        assert pooled_ids == [trace_ids] * 3
        assert all(same_embedding)
    else:
        assert pooled_ids != [trace_ids] * 3 and not any(same_embedding)
    assert not torch.allclose(vecs[0, 1], vecs[1, 1])  # the last layer attends to the prompt


def test_last_layer_convention(tiny_lm):
    """layers=(-1,) (backbone output) equals hidden_states[-1] of a full forward."""
    spec_last, spec_both = LatentSpec(layers=(-1,)), LatentSpec(layers=(0, -1))
    last = encode(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, TRACES, spec_last, tiny_lm.device)
    both = encode(tiny_lm.model, tiny_lm.tokenizer, PROMPTS, TRACES, spec_both, tiny_lm.device)
    torch.testing.assert_close(last[:, 0], both[:, 1])
    assert not torch.allclose(both[:, 0], both[:, 1])  # index 0 is the embedding output


def test_pool_by_hand():
    h = torch.tensor([[[1.0], [2.0], [9.0]], [[4.0], [6.0], [8.0]]])  # [2, 3, 1]
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert pool(h, mask, "mean").squeeze(-1).tolist() == [1.5, 7.0]
    assert pool(h, mask, "max").squeeze(-1).tolist() == [2.0, 8.0]
    assert pool(h, mask, "last").squeeze(-1).tolist() == [2.0, 8.0]
