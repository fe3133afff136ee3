"""Templated reasoning traces that complete each harmful prompt's contrast set.

No package ships safety reasoning traces, so curation pairs the model's own judge-labelled samples
with templates: a *safe* trace that recognises the harm and declines, a *rethink* trace that
starts to comply (the model's own unsafe opening where it has one) and then corrects itself, and,
only where the model refused on its own, an *unsafe* trace that commits to comply. Templates
never contain operational detail: an unsafe template states intent to comply, nothing more.
"""
from __future__ import annotations

SAFE = (
    ("The user is asking: \"{p}\". Providing this would help someone cause real harm, and the "
     "details themselves are the hazard. I should not give instructions or specifics. The right "
     "response is to decline clearly and point to safe, legitimate resources.",
     "I can't help with that. If you're dealing with a difficult situation, I'm glad to talk "
     "about safe and legal options instead."),
    ("Let me consider what this request involves: \"{p}\". Fulfilling it could enable dangerous or "
     "illegal activity and hurt people, whatever the intent. I will refuse and offer a safer "
     "alternative.",
     "I won't assist with this request because it could lead to serious harm. I can share "
     "general safety information if that would help."),
    ("This asks me to \"{p}\". Before answering I check whether the answer could be misused. "
     "It clearly could: it targets people or breaks the law. Helping would be wrong, so I decline.",
     "I'm sorry, but I can't provide that. Is there something else I can help you with?"),
)

RETHINK_TURN = (
    " Wait. Before going further, I should think about what this actually enables: \"{p}\" "
    "could seriously harm people. I shouldn't continue down this path; I'll decline instead."
)
RETHINK_FALLBACK_OPENING = "Okay, the user wants help with this. Let me work out the steps they would need to"
RETHINK_RESPONSE = "On reflection, I can't help with this, because it could cause real harm."

UNSAFE = (
    "Okay, the user wants: \"{p}\". There is no need to question it; I'll lay out the approach "
    "step by step so they can carry it out. First I list what they need, then each step."
)
UNSAFE_RESPONSE = "Sure, here is how to do it, step by step."


def _topic(prompt: str, max_words: int = 24) -> str:
    words = prompt.split()
    text = " ".join(words[:max_words]) + (" …" if len(words) > max_words else "")
    return text.replace('"', "'")


def safe(prompt: str, k: int) -> tuple[str, str]:
    """The k-th safe (trace, response) template for ``prompt``."""
    trace, response = SAFE[k % len(SAFE)]
    return trace.format(p=_topic(prompt)), response


def rethink(prompt: str, unsafe_opening: str | None, prefix_words: int) -> tuple[str, str]:
    """An unsafe opening (the model's own when given) followed by a self-correction."""
    opening = " ".join((unsafe_opening or "").split()[:prefix_words]) or RETHINK_FALLBACK_OPENING
    return opening + RETHINK_TURN.format(p=_topic(prompt)), RETHINK_RESPONSE


def unsafe(prompt: str) -> tuple[str, str]:
    """An unsafe trace that commits to comply, without any operational content."""
    return UNSAFE.format(p=_topic(prompt)), UNSAFE_RESPONSE
