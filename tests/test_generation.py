import pytest
import torch

from components.lm.generation import SamplingParams, generate, render, split_reasoning


@pytest.mark.parametrize("text, expected", [
    ("<think>plan</think>answer", ("plan", "answer")),
    ("plan</think>answer", ("plan", "answer")),                          # template pre-opened the tag
    ("<think>plan that was truncated", ("plan that was truncated", "")),
    ("<think>a <think>b</think> c</think> final", ("a <think>b</think> c", "final")),  # nested stays in trace
    ("no tags at all", ("no tags at all", "no tags at all")),
    ("", ("", "")),
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def test_render_uses_chat_template(tiny_lm):
    text = render(tiny_lm.tokenizer, "hello")
    assert text.startswith("<|im_start|>user\nhello<|im_end|>") and text.endswith("<|im_start|>assistant\n")


def test_batched_greedy_equals_one_at_a_time(tiny_lm):
    prompts = ["How do I kill a process?", "Write a haiku", "Explain recursion with an example please"]
    params = SamplingParams(max_new_tokens=8, batch_size=3)
    batched = generate(tiny_lm, prompts, params)
    single = [generate(tiny_lm, [p], SamplingParams(max_new_tokens=8, batch_size=1))[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_engines_agree_greedy(tiny_lm):
    """Our decode loop writes the same greedy completions as ``model.generate``."""
    prompts = ["How do I kill a process?", "Write a haiku about snow please", "Hi"]
    hf = generate(tiny_lm, prompts, SamplingParams(max_new_tokens=8, batch_size=3, engine="hf"))
    ours = generate(tiny_lm, prompts, SamplingParams(max_new_tokens=8, batch_size=3, engine="ours"))
    assert ours == hf


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine='vllm'"):
        SamplingParams(engine="vllm")


def _count_hf_generate(monkeypatch, model) -> list:
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_model_engine_setting_picks_the_engine(tiny_lm, monkeypatch):
    """params.yaml ``model.engine`` reaches every ``generate`` call: ``hf`` goes through
    ``model.generate``, ``ours`` never does; a SamplingParams engine overrides the model's."""
    import dataclasses

    calls = _count_hf_generate(monkeypatch, tiny_lm.model)
    prompts = ["Write a haiku", "Hi"]
    ours = generate(tiny_lm, prompts, SamplingParams(max_new_tokens=6, batch_size=2))
    assert calls == []
    hf_lm = dataclasses.replace(tiny_lm, engine="hf")
    assert generate(hf_lm, prompts, SamplingParams(max_new_tokens=6, batch_size=2)) == ours
    assert len(calls) == 1
    generate(hf_lm, prompts, SamplingParams(max_new_tokens=6, batch_size=2, engine="ours"))
    assert len(calls) == 1


def test_rollouts_use_the_model_engine(tiny_lm, monkeypatch):
    from components.rl.policy import rollout

    calls = _count_hf_generate(monkeypatch, tiny_lm.model)
    rollout(tiny_lm.model, tiny_lm.tokenizer, ["Hi"], 2, 4, 1.0, 1.0, tiny_lm.device)
    assert calls == []
    rollout(tiny_lm.model, tiny_lm.tokenizer, ["Hi"], 2, 4, 1.0, 1.0, tiny_lm.device, engine="hf")
    assert len(calls) == 1


@pytest.mark.parametrize("engine", ["hf", "ours"])
def test_sampling_leaves_the_global_rng_alone(tiny_lm, engine):
    """Sampling follows ``generator`` only: the process RNG is the same after the call, its state
    does not change the samples, and one seed gives one completion."""
    import torch

    from components.lm.generation import new_tokens

    tok = tiny_lm.tokenizer
    enc = tok([render(tok, p) for p in ("Write a haiku", "Hi")], return_tensors="pt", padding=True,
              add_special_tokens=False)

    def sample(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        ids = new_tokens(tiny_lm.model, tok, enc, 8, temperature=1.0, generator=torch.Generator().manual_seed(7),
                         engine=engine)
        assert torch.equal(torch.get_rng_state(), before)
        return ids

    first = sample(0)
    assert torch.equal(sample(0), first) and torch.equal(sample(1), first)


def test_hf_sampling_draws_as_it_always_has(tiny_lm):
    """The ``hf`` engine's samples for a seed are those of ``model.generate`` after
    ``torch.manual_seed(draw from generator)`` (the committed results were made that way)."""
    import torch

    from components.lm.generation import new_tokens

    tok = tiny_lm.tokenizer
    enc = tok([render(tok, "Write a haiku")], return_tensors="pt", padding=True, add_special_tokens=False)
    ids = new_tokens(tiny_lm.model, tok, enc, 8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3),
                     engine="hf")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(3))))
    ref = tiny_lm.model.generate(**enc, max_new_tokens=8, pad_token_id=tok.pad_token_id, do_sample=True,
                                 temperature=1.0, top_p=0.9)
    assert torch.equal(ids, ref[:, enc["input_ids"].shape[1]:])


def test_batches_without_a_token_limit_are_fixed_size():
    from components.lm.generation import batches

    assert batches([3, 1, 2, 0, 4], 2) == [[3, 1], [2, 0], [4]]
    assert batches([3, 1, 2], 2, lengths=[5, 5, 5, 5], batch_tokens=0) == [[3, 1], [2]]


def test_batches_stop_before_the_token_limit():
    """rows × (longest prompt + new tokens) ≤ batch_tokens; a row longer than the limit goes alone."""
    from components.lm.generation import batches

    lengths = [2, 2, 2, 2, 6, 6, 30, 4]
    order = [0, 1, 2, 3, 7, 4, 5, 6]  # ascending length, as generate orders them
    got = batches(order, 8, lengths, batch_tokens=24, max_new_tokens=2)
    # 4 rows × (2 + 2) = 16, a 5th with length 4: 5 × 6 = 30 > 24; then [7, 4]: 2 × 8 = 16, 3 × 8 = 24
    assert got == [[0, 1, 2, 3], [7, 4, 5], [6]]
    for b in got[:-1]:
        assert len(b) * (max(lengths[i] for i in b) + 2) <= 24
    assert sorted(i for b in got for i in b) == sorted(order)
    assert batches(order, 2, lengths, batch_tokens=10_000, max_new_tokens=2) == [[0, 1], [2, 3], [7, 4], [5, 6]]
    assert batches([], 2, [], batch_tokens=10, max_new_tokens=1) == []


def test_a_new_batch_measures_only_its_own_rows():
    """After a cut the longest prompt restarts at the new row: generate orders rows by characters,
    so token lengths can fall, and a long row must not keep shrinking the batches after it."""
    from components.lm.generation import batches

    lengths = [2, 2, 2, 2, 6, 6, 30, 4]
    assert batches([6, 0, 1], 8, lengths, batch_tokens=24, max_new_tokens=2) == [[6], [0, 1]]


def test_token_limited_batches_keep_input_order(tiny_lm, monkeypatch):
    """A token limit changes how rows are grouped, never which reply belongs to which prompt."""
    from components.lm import generation

    prompts = ["Hi", "Write a haiku about snow please and make it long " * 4, "How do I kill a process?", "Ok"]
    sizes = []
    real = generation.new_tokens
    monkeypatch.setattr(generation, "new_tokens", lambda m, t, enc, *a, **k: sizes.append(enc["input_ids"].shape[0])
                        or real(m, t, enc, *a, **k))
    limited = generate(tiny_lm, prompts, SamplingParams(max_new_tokens=6, batch_size=4, batch_tokens=90))
    assert len(sizes) > 1 and max(sizes) > 1 and sum(sizes) == 4
    single = [generate(tiny_lm, [p], SamplingParams(max_new_tokens=6, batch_size=1))[0] for p in prompts]
    assert limited == single


def test_sampling_params_refuse_bad_batches():
    """Each bad field gets its own message, naming that field only."""
    with pytest.raises(ValueError, match="batch_tokens") as bad_tokens:
        SamplingParams(batch_tokens=-1)
    assert "batch_size" not in str(bad_tokens.value)
    with pytest.raises(ValueError, match="batch_size") as bad_rows:
        SamplingParams(batch_size=0)
    assert "batch_tokens" not in str(bad_rows.value)


def test_token_limited_generation_of_no_prompts_is_empty(tiny_lm):
    assert generate(tiny_lm, [], SamplingParams(max_new_tokens=4, batch_tokens=64)) == []


def test_a_prefill_is_continued_not_returned(tiny_lm):
    """Greedy from a forced reply opening equals greedy from the rendered prompt with the opening
    appended: the model writes on from it, and only what it wrote comes back."""
    tok = tiny_lm.tokenizer
    prompts, openings = ["Write a haiku", "Explain recursion"], ["I'm sorry, but", "I can't"]
    params = SamplingParams(max_new_tokens=6, batch_size=2)
    got = generate(tiny_lm, prompts, params, prefills=openings)
    for p, o, g in zip(prompts, openings, got):
        ids = tok(render(tok, p) + o, return_tensors="pt", add_special_tokens=False).input_ids
        out = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
        assert g == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="one per prompt"):
        generate(tiny_lm, prompts, params, prefills=openings[:1])
