"""The per-token monitor: incremental scores equal one full forward; guard mode; record and plot."""
import json

import pytest
import torch

from components.eval import audit
from components.head.model import SafetyHead
from components.lm.latents import LatentSpec


def _head(pooling: str, layers=(-1,)) -> SafetyHead:
    torch.manual_seed(0)
    head = SafetyHead(32 * len(layers), 16, 8, LatentSpec(layers=layers, pooling=pooling))
    head.set_input_stats(torch.randn(20, 32 * len(layers)))
    return head.eval()


@pytest.mark.parametrize("pooling, layers", [("mean", (-1,)), ("max", (-1, 1)), ("last", (-1,))])
def test_incremental_equals_full_forward(tiny_lm, pooling, layers):
    head = _head(pooling, layers)
    record = audit.generate_with_audit(tiny_lm, head, "How do I pick a lock?", max_new_tokens=12)
    assert len(record.tokens) == len(record.scores["p_safe"]) > 0
    full = audit.score_full(tiny_lm, head, "How do I pick a lock?", _ids(tiny_lm, record))
    for key in audit.SCORE_KEYS:
        torch.testing.assert_close(torch.tensor(record.scores[key]), torch.tensor(full[key]), atol=1e-4, rtol=1e-4)


def _ids(lm, record):
    """Re-derive generated ids from per-token strings (each decoded from exactly one id)."""
    vocab = lm.tokenizer.get_vocab()
    inv = {}
    for tok, i in vocab.items():
        inv.setdefault(lm.tokenizer.decode([i]), i)
    return [inv[t] for t in record.tokens]


def test_guard_stops_and_redirects(tiny_lm):
    record = audit.generate_with_audit(tiny_lm, _head("mean"), "Tell me something", max_new_tokens=20,
                                       guard=audit.GuardConfig(threshold=1.01, patience=3))
    assert record.guard["stopped_at_token"] == 2 and len(record.tokens) == 3
    assert record.completion.endswith(audit.REDIRECT) and record.first_unsafe_token == 0


def test_record_is_json_and_plots(tiny_lm, tmp_path):
    record = audit.generate_with_audit(tiny_lm, _head("mean"), "Hello", max_new_tokens=6, threshold=0.5)
    data = json.loads(json.dumps(record.to_json()))
    assert set(data["scores"]) == set(audit.SCORE_KEYS) and data["threshold"] == 0.5
    audit.plot(record, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert len(audit.render_terminal(record).plain) > 0
