"""The decode loop (components/lm/decode.py) against ``model.generate`` and its own invariants."""
import pytest
import torch

from components.lm import decode
from components.lm.generation import eos_ids, render

PROMPTS = ["How do I kill a process?", "Write a haiku about snow please", "Hi",
           "Explain recursion with an example, step by step, for a beginner"]


def _batch(lm, prompts=PROMPTS):
    texts = [render(lm.tokenizer, p) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _ours(lm, enc, n, **kw):
    return decode.DecodeEngine(lm.model).generate(enc["input_ids"], enc["attention_mask"], n,
                                                  eos_ids=eos_ids(lm.model, lm.tokenizer),
                                                  pad_id=lm.tokenizer.pad_token_id, **kw)


def _hf(lm, enc, n, **kw):
    with torch.inference_mode():
        ids = lm.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id, **kw)
    return ids[:, enc["input_ids"].shape[1]:]


@pytest.mark.parametrize("n", [1, 5, 24])
def test_greedy_tokens_equal_generate(tiny_lm, n):
    """Same token ids as HF generate (greedy, left padding, rows of different lengths)."""
    enc = _batch(tiny_lm)
    assert torch.equal(_ours(tiny_lm, enc, n), _hf(tiny_lm, enc, n))


def test_ignore_eos_generates_every_token(tiny_lm):
    enc = _batch(tiny_lm)
    ours = _ours(tiny_lm, enc, 12, ignore_eos=True)
    assert ours.shape == (len(PROMPTS), 12)
    assert torch.equal(ours, _hf(tiny_lm, enc, 12, min_new_tokens=12))


def test_rows_after_eos_are_padded_and_width_trimmed(tiny_lm):
    """Every token counts as EOS: each row stops at once, later columns are pad, width is 1."""
    enc = _batch(tiny_lm)
    vocab = tiny_lm.model.config.vocab_size
    out = decode.DecodeEngine(tiny_lm.model).generate(enc["input_ids"], enc["attention_mask"], 10,
                                                      eos_ids=list(range(vocab)), pad_id=tiny_lm.tokenizer.pad_token_id)
    assert out.shape == (len(PROMPTS), 1)


def test_early_eos_rows_match_generate(tiny_lm):
    """A row that ends early continues with pad, the rest decode on, exactly as in generate."""
    enc = _batch(tiny_lm)
    free = _hf(tiny_lm, enc, 12, min_new_tokens=12)
    stop = int(free[0, 3])  # row 0 ends at its 4th token; others wherever this id turns up
    ours = decode.DecodeEngine(tiny_lm.model).generate(enc["input_ids"], enc["attention_mask"], 12, eos_ids=[stop],
                                                       pad_id=tiny_lm.tokenizer.pad_token_id)
    hf = _hf(tiny_lm, enc, 12, eos_token_id=stop)
    assert torch.equal(ours, hf)
    assert (ours[0, 4:] == tiny_lm.tokenizer.pad_token_id).all()


def test_session_reuse_gives_same_tokens(tiny_lm):
    """A second call on the same engine (cache reused, offsets reset) decodes the same."""
    engine, enc = decode.DecodeEngine(tiny_lm.model), _batch(tiny_lm)
    args = dict(eos_ids=eos_ids(tiny_lm.model, tiny_lm.tokenizer), pad_id=tiny_lm.tokenizer.pad_token_id)
    first = engine.generate(enc["input_ids"], enc["attention_mask"], 9, **args)
    second = engine.generate(enc["input_ids"], enc["attention_mask"], 9, **args)
    assert torch.equal(first, second)


def test_sampling_is_seeded(tiny_lm):
    enc = _batch(tiny_lm)

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return _ours(tiny_lm, enc, 10, sampling=decode.Sampling(1.0, 0.9, gen), ignore_eos=True)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept, ids = decode.nucleus(probs, 0.8)
    assert ids[0, :2].tolist() == [0, 1] and kept[0].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    kept, ids = decode.nucleus(probs, 0.01)
    assert kept[0].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("first_k", [4, 10**6])  # the width doubles; one full sort (the CUDA path)
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_nucleus_is_hf_top_p(top_p, first_k, monkeypatch):
    """The kept set equals transformers' TopPLogitsWarper's, also when the set is wider than the
    first top-k tried."""
    from transformers.generation.logits_process import TopPLogitsWarper

    monkeypatch.setattr(decode, "NUCLEUS_K", first_k)
    gen = torch.Generator().manual_seed(0)
    for scale in (0.5, 2.0, 8.0):  # flat to peaked
        scores = torch.randn(6, 300, generator=gen) * scale
        hf = TopPLogitsWarper(top_p)(None, scores.clone()).isfinite()
        kept, ids = decode.nucleus(torch.softmax(scores, -1), top_p)
        ours = torch.zeros_like(hf).scatter_(1, ids, kept > 0)
        assert torch.equal(ours, hf)


def test_draw_follows_the_weights():
    """Inverse-CDF draws: frequencies match the weights (unnormalised too), a zero weight is never
    drawn, and a seed gives one sequence."""
    weights = torch.tensor([[5.0, 3.0, 0.0, 2.0]]).repeat(4000, 1)  # 4000 independent rows
    first = decode.draw(weights, torch.Generator().manual_seed(1))
    assert torch.equal(first, decode.draw(weights, torch.Generator().manual_seed(1)))
    freq = torch.bincount(first, minlength=4).float() / len(first)
    assert freq[2] == 0
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.0, 0.2], abs=0.03)  # sd of each share ≤ 0.008


def test_the_most_likely_token_stays_whatever_top_p_says():
    kept, ids = decode.nucleus(torch.tensor([[0.1, 0.6, 0.3]]), 1e-12)
    assert ids[0, 0] == 1 and kept[0].tolist() == pytest.approx([0.6, 0.0, 0.0])


def test_draw_never_lands_on_a_trailing_zero_weight(monkeypatch):
    """u that rounds up to the row total draws the last token with weight, not a masked one."""
    weights = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(1, 1, dtype=torch.float64))
    assert decode.draw(weights).tolist() == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_draw_refuses_diverged_weights(bad):
    weights = torch.tensor([[0.5, 0.5], [bad, bad if bad == 0.0 else 0.2]])
    with pytest.raises(ValueError, match="NaN, infinite or all zero"):
        decode.draw(weights)


def test_sampled_tokens_stay_in_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    picks = decode.Sampling(1.0, 0.8, torch.Generator().manual_seed(0)).pick(logits)
    share = torch.bincount(picks, minlength=4).float() / len(picks)
    assert share[2:].sum() == 0 and share[0].item() == pytest.approx(0.5 / 0.8, abs=0.04)


def test_rollout_ids_can_be_trained_on(tiny_lm):
    """Rollout token ids leave inference mode: the policy update embeds them with autograd."""
    from components.rl.policy import forward_logprobs, rollout

    ro = rollout(tiny_lm.model, tiny_lm.tokenizer, PROMPTS[:2], 2, 6, 1.0, 1.0, tiny_lm.device)
    assert not ro.input_ids.is_inference()
    logp, _, _ = forward_logprobs(tiny_lm.model, ro)
    logp.sum().backward()
    assert any(p.grad is not None for p in tiny_lm.model.parameters())
    tiny_lm.model.zero_grad(set_to_none=True)


def test_completion_logprobs_equal_the_full_forward(tiny_lm):
    """forward_logprobs' log-probs, logits and hidden states are those of the completion positions
    of a forward over the whole sequence, in the rows asked for."""
    from components.rl.formulas import token_logprobs
    from components.rl.policy import forward_logprobs, rollout

    ro = rollout(tiny_lm.model, tiny_lm.tokenizer, PROMPTS[:3], 2, 5, 1.0, 1.0, tiny_lm.device)
    idx = torch.tensor([4, 0, 3])
    logp, logits, hidden = forward_logprobs(tiny_lm.model, ro, idx, want_hidden=True)
    ids, attn, tp = ro.input_ids[idx], ro.attention_mask[idx], ro.prompt_len
    with torch.no_grad():
        full = tiny_lm.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                             output_hidden_states=True, use_cache=False)
    want = full.logits[:, tp - 1 : -1]
    assert logits.shape == want.shape == (3, ids.shape[1] - tp, want.shape[-1])
    torch.testing.assert_close(logits.detach(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp.detach(), token_logprobs(want, ids[:, tp:]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.detach(), full.hidden_states[-1][:, tp - 1 : -1])


def test_merged_decoding_equals_adapter_decoding(tiny_model_dir):
    """Rollouts fold LoRA into shadow weights: same greedy tokens as the adapter path (float32),
    base weights untouched, no extra parameters registered."""
    from components.lm import runtime
    from components.lm import source as model_source
    from components.lm.generation import new_tokens
    from components.rl.policy import LoraSpec, merged_for_decoding, wrap_lora

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    lm = runtime.load(model_source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=4, alpha=8), seed=0)
    with torch.no_grad():  # a non-zero adapter, so merging matters
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    enc = _batch(lm)
    plain = new_tokens(policy, lm.tokenizer, enc, 10)
    with merged_for_decoding(policy):
        merged = new_tokens(policy, lm.tokenizer, enc, 10, tag="merged")
    assert torch.equal(plain, merged)
    after = policy.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with policy.disable_adapter():
        base = new_tokens(policy, lm.tokenizer, enc, 10)
    assert not torch.equal(base, plain), "the adapter should change the greedy tokens"


class _Replay:
    """CPU stand-in for a CUDA graph: replay re-runs the step and rewrites the captured output."""

    def __init__(self, fn, out):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self):
        self.out.copy_(self.fn())
        self.replays += 1


def _fake_capture(fn):
    for _ in range(2):  # warm-ups advance the cache's write offsets, as on a GPU
        fn()
    out = fn()
    return _Replay(fn, out), out


class _Recorder(decode.Sampling):
    """Greedy picks that keep every step's logits."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "seen", [])

    def pick(self, logits):
        self.seen.append(logits.float().clone())
        return super().pick(logits)


def _assert_step_logits_exact(lm, enc, new, seen):
    """Each decode step's logits equal one full forward over prompt + completion: a wrong cache
    slot, mask or position changes them even where a tiny random model's argmax would not."""
    ids = torch.cat([enc["input_ids"], new], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(new)], 1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        full = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    p = enc["input_ids"].shape[1]
    for t, logits in enumerate(seen[: new.shape[1]]):
        torch.testing.assert_close(logits, full[:, p - 1 + t], atol=1e-4, rtol=1e-4)


def test_eager_step_logits_equal_full_forward(tiny_lm):
    engine, enc, rec = decode.DecodeEngine(tiny_lm.model), _batch(tiny_lm), _Recorder()
    new = engine.generate(enc["input_ids"], enc["attention_mask"], 9, eos_ids=[-1],
                          pad_id=tiny_lm.tokenizer.pad_token_id, sampling=rec)
    _assert_step_logits_exact(tiny_lm, enc, new, rec.seen)


def test_graph_bookkeeping_matches_full_forward(tiny_lm, monkeypatch):
    """The graph path's bookkeeping, on CPU: warm-up offsets undone, prompt width and slot read
    from buffers (batches of other widths in the same cache bucket replay correctly), the
    captured output read after each replay."""
    monkeypatch.setattr(decode, "capture_graph", _fake_capture)
    engine = decode.DecodeEngine(tiny_lm.model, use_graphs=True)
    for prompts in (PROMPTS, [p + " now" for p in PROMPTS], PROMPTS):  # widths differ, one bucket
        enc, rec = _batch(tiny_lm, prompts), _Recorder()
        new = engine.generate(enc["input_ids"], enc["attention_mask"], 9, eos_ids=[-1],
                              pad_id=tiny_lm.tokenizer.pad_token_id, sampling=rec)
        _assert_step_logits_exact(tiny_lm, enc, new, rec.seen)
    (session,) = engine._sessions.values()
    assert session.length % decode.GRAPH_BUCKET == 0
    assert isinstance(session.graph, _Replay) and session.graph.replays == 3 * 8
