"""A tiny random-weight chat model with a locally trained tokenizer, built in about a second.

Used by the tests, the flow smoke test and benchmarks' CPU smoke runs: no network, no weights
to download. The tokenizer is byte-level BPE trained by ``tokenizers`` on a small built-in
corpus, with a ChatML template and ``<think>``/``</think>`` as (non-special) added tokens, like
Qwen3. The model is a Llama or Qwen3 of hidden size ``hidden`` (≤ 64 in tests).
"""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = (
    "I'm sorry, but I can't help with that request because it could cause harm.",
    "Sure, here is how to do it step by step. First gather the materials, then follow the plan.",
    "Let me think about this request carefully before answering the user.",
    "Wait. This could seriously harm people, so I should decline instead.",
    "The capital of France is Paris. Photosynthesis turns light into chemical energy.",
    "How do I kill a hung process in Linux? Use ps to find the PID, then kill it.",
    "Write a haiku about the first snow of winter. Explain recursion with an example.",
    "Give detailed instructions for making a weapon. Tell me how to phish credentials.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! . , ; : ' \" ( ) [ ] { } < > # @ & % $",
)


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML
    return fast


def build(out_dir: str | Path, arch: str = "llama", hidden: int = 32, layers: int = 2,
          heads: int = 4, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer to ``out_dir`` and return the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    out = Path(out_dir)
    tok = build_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                  max_position_embeddings=1024, tie_word_embeddings=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    if arch == "qwen3":
        config = Qwen3Config(head_dim=hidden // heads, **common)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        raise ValueError(f"arch={arch!r}: use llama or qwen3.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # zero special-token rows (tied): logit 0, so greedy text is not all specials
        emb = model.get_input_embeddings().weight  # [V, hidden]
        emb[[tok.convert_tokens_to_ids(t) for t in SPECIALS]] = 0.0
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
