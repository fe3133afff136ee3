import pytest

from components.generation import SamplingParams, generate, render, split_reasoning


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
