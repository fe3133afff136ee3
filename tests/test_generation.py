import pytest

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
