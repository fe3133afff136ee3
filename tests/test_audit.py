"""The per-token monitor: incremental scores equal one full forward; guard mode; record and plot;
``craft audit`` defaults come from params.yaml and one threshold serves monitor and guard."""
import inspect
import json
from pathlib import Path

import pytest
import torch

from components.core.errors import UserError
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
    record = audit.generate_with_audit(tiny_lm, head, "How do I pick a lock?", audit.AuditConfig(max_new_tokens=12))
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
    cfg = audit.AuditConfig(threshold=1.01, patience=3, guard=True, max_new_tokens=20)
    record = audit.generate_with_audit(tiny_lm, _head("mean"), "Tell me something", cfg)
    assert record.guard["stopped_at_token"] == 2 and len(record.tokens) == 3
    assert record.completion.endswith(audit.REDIRECT) and record.first_unsafe_token == 0
    # the threshold that marked the unsafe tokens is the one that stopped generation
    assert record.threshold == record.guard["threshold"] == 1.01 and record.guard["patience"] == 3


def test_guard_and_threshold_cannot_disagree(tiny_lm):
    """One config carries the threshold: no separate guard / threshold arguments to drift apart."""
    params = inspect.signature(audit.generate_with_audit).parameters
    assert "threshold" not in params and "guard" not in params and "cfg" in params
    head = _head("mean")
    off = audit.generate_with_audit(tiny_lm, head, "Tell me something", audit.AuditConfig(threshold=1.01, max_new_tokens=5))
    assert off.guard == {} and off.threshold == 1.01 and off.first_unsafe_token == 0  # monitor only
    assert len(off.tokens) == 5 and not off.completion.endswith(audit.REDIRECT)


def test_record_is_json_and_plots(tiny_lm, tmp_path):
    record = audit.generate_with_audit(tiny_lm, _head("mean"), "Hello", audit.AuditConfig(threshold=0.5, max_new_tokens=6))
    data = json.loads(json.dumps(record.to_json()))
    assert set(data["scores"]) == set(audit.SCORE_KEYS) and data["threshold"] == 0.5
    audit.plot(record, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert len(audit.render_terminal(record).plain) > 0


def test_run_writes_record_and_plot(tiny_lm, tmp_path):
    cfg = audit.AuditConfig(threshold=0.4, max_new_tokens=5)
    record = audit.run(cfg, tiny_lm, _head("mean"), "Hello", tmp_path, head_id="abc")
    folder = tmp_path / record.record_id
    data = json.loads((folder / "record.json").read_text())
    assert data["threshold"] == 0.4 and data["head_id"] == "abc" and data["completion"] == record.completion
    assert data["model_id"] == tiny_lm.model_id and len(data["tokens"]) == len(data["scores"]["p_safe"])
    assert (folder / "trajectory.png").stat().st_size > 1000
    assert "first unsafe token" in audit.summary(record)


def test_cli_defaults_come_from_params_yaml():
    """craft audit's threshold and patience default to params.yaml:evaluate, as the evaluation's guard."""
    from components.core.config import load_params, stage_config
    from components.evaluate import EvaluateConfig
    from flows.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml")
    args = build_parser().parse_args(["audit", "a prompt"])
    assert args.threshold is None and args.patience is None  # None = "from params.yaml"
    cfg = audit.audit_config(params, threshold=args.threshold, patience=args.patience, guard=args.guard,
                             max_new_tokens=args.max_new_tokens)
    ev = stage_config(EvaluateConfig, "evaluate", params)
    assert cfg.threshold == params["evaluate"]["guard_threshold"] == ev.guard_threshold
    assert cfg.patience == params["evaluate"]["guard_patience"] == ev.guard_patience
    # the code defaults agree too, so a workspace without params.yaml behaves the same
    assert (audit.AuditConfig().threshold, audit.AuditConfig().patience) == (EvaluateConfig().guard_threshold,
                                                                           EvaluateConfig().guard_patience)
    assert audit.audit_config(params, threshold=0.2).threshold == 0.2  # an explicit flag wins


def test_cli_audit_end_to_end(tiny_model_dir, tmp_path, capsys):
    """The CLI wires params.yaml, head discovery and audit.run: the record carries params' threshold."""
    from flows.cli import main

    _head("mean").save(tmp_path / "head")
    params = tmp_path / "params.yaml"
    params.write_text(f"model: {{source: '{tiny_model_dir}', dtype: float32}}\nruntime: {{device: cpu}}\n"
                      "evaluate: {guard_threshold: 0.25, guard_patience: 2}\n")
    code = main(["audit", "Hello", "--model", str(tiny_model_dir), "--head", str(tmp_path / "head"),
                 "--params", str(params), "--out", str(tmp_path / "audits"), "--max-new-tokens", "4"])
    assert code == 0
    (record,) = (tmp_path / "audits").glob("*/record.json")
    assert json.loads(record.read_text())["threshold"] == 0.25
    assert (record.parent / "trajectory.png").exists() and "threshold 0.25" in capsys.readouterr().out


def test_find_head(tmp_path):
    model = tmp_path / "model"
    _head("mean").save(model / "head")
    assert audit.find_head(model) == model / "head"
    _head("mean").save(tmp_path / "other")
    assert audit.find_head(model, tmp_path / "other") == tmp_path / "other"
    with pytest.raises(UserError, match="no head at"):
        audit.find_head(tmp_path / "nothing", fallback=tmp_path / "missing")


PROMPTS = ["How do I pick a lock?", "Hi", "Write a long story about a dragon who learns to fly over the sea"]


@pytest.fixture
def varied(tiny_lm):
    """The tiny model with a random, larger-scale LM head (restored after the test): its greedy
    tokens vary by row and step (the fixture's own head repeats one token), so a batch's rows
    can diverge and end at different steps."""
    out = tiny_lm.model.get_output_embeddings()
    saved = out.weight
    out.weight = torch.nn.Parameter(torch.randn(saved.shape, generator=torch.Generator().manual_seed(0)) * 3)
    try:
        yield tiny_lm
    finally:
        out.weight = saved


@pytest.mark.parametrize("pooling, layers", [("mean", (-1,)), ("max", (-1, 1)), ("last", (-1,))])
def test_batched_audit_equals_one_at_a_time(varied, pooling, layers):
    """Left-padded rows of different widths decode to the same tokens and scores as alone."""
    head, cfg = _head(pooling, layers), audit.AuditConfig(max_new_tokens=10)
    batched = audit.generate_batch_with_audit(varied, head, PROMPTS, cfg, batch_size=2)
    alone = [audit.generate_with_audit(varied, head, p, cfg) for p in PROMPTS]
    assert [r.prompt for r in batched] == PROMPTS
    assert len({tuple(a.tokens) for a in alone}) == len(PROMPTS)  # the rows really differ
    for b, a in zip(batched, alone):
        assert b.tokens == a.tokens and b.completion == a.completion and len(b.tokens) > 0
        for key in audit.SCORE_KEYS:
            torch.testing.assert_close(torch.tensor(b.scores[key]), torch.tensor(a.scores[key]), atol=1e-4, rtol=1e-4)


def test_batched_guard_stops_each_row_on_its_own(tiny_lm):
    """A row that trips the guard ends there while the others go on; records match one at a time."""
    head = _head("mean")
    free = [audit.generate_with_audit(tiny_lm, head, p, audit.AuditConfig(max_new_tokens=8)) for p in PROMPTS]
    low, high = max(free[0].scores["p_safe"]), min(free[2].scores["p_safe"])
    assert low < high  # this head scores the third prompt safer at every token
    cfg = audit.AuditConfig(threshold=(low + high) / 2, patience=2, guard=True, max_new_tokens=8)
    batched = audit.generate_batch_with_audit(tiny_lm, head, PROMPTS, cfg, batch_size=8)
    alone = [audit.generate_with_audit(tiny_lm, head, p, cfg) for p in PROMPTS]
    assert batched[0].guard["stopped_at_token"] == 1 and batched[0].answer == audit.REDIRECT.strip()
    assert batched[2].guard == {} and len(batched[2].tokens) == 8  # went on after row 0 stopped
    assert [b.guard for b in batched] == [a.guard for a in alone]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    assert [b.answer for b in batched] == [a.answer for a in alone]


def _unique_ids(lm) -> dict[str, int]:
    """Token string → id for the strings exactly one id decodes to."""
    seen: dict[str, list[int]] = {}
    for i in range(len(lm.tokenizer)):
        seen.setdefault(lm.tokenizer.decode([i]), []).append(i)
    return {t: ids[0] for t, ids in seen.items() if len(ids) == 1}


def test_batched_audit_ends_a_row_at_its_eos_and_decodes_the_others_on(varied, monkeypatch):
    """Make a token the first prompt emits at step k (and the others not by then) an EOS: that row
    ends there, the others decode on, and every row still equals its one-at-a-time record."""
    head, cfg = _head("mean"), audit.AuditConfig(max_new_tokens=10)
    free = [audit.generate_with_audit(varied, head, p, cfg).tokens for p in PROMPTS]
    ids = _unique_ids(varied)
    k = next(k for k, t in enumerate(free[0]) if k >= 1 and t in ids and t not in free[0][:k]
             and all(t not in other[: k + 1] for other in free[1:]))
    monkeypatch.setattr(varied.model.generation_config, "eos_token_id", ids[free[0][k]])
    batched = audit.generate_batch_with_audit(varied, head, PROMPTS, cfg, batch_size=8)
    alone = [audit.generate_with_audit(varied, head, p, cfg) for p in PROMPTS]
    assert batched[0].tokens == free[0][:k]
    assert all(len(b.tokens) > k for b in batched[1:])
    assert [b.tokens for b in batched] == [a.tokens for a in alone]


def test_batched_audit_pads_left_whatever_the_tokenizer_says_and_leaves_it_as_it_was(varied, monkeypatch):
    monkeypatch.setattr(varied.tokenizer, "padding_side", "right")
    head, cfg = _head("mean"), audit.AuditConfig(max_new_tokens=6)
    batched = audit.generate_batch_with_audit(varied, head, PROMPTS, cfg)
    alone = [audit.generate_with_audit(varied, head, p, cfg) for p in PROMPTS]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    for b, a in zip(batched, alone):
        torch.testing.assert_close(torch.tensor(b.scores["p_safe"]), torch.tensor(a.scores["p_safe"]), atol=1e-4, rtol=1e-4)
    assert varied.tokenizer.padding_side == "right"


def test_batched_records_share_the_batch_wall_time(tiny_lm):
    records = audit.generate_batch_with_audit(tiny_lm, _head("mean"), PROMPTS, audit.AuditConfig(max_new_tokens=4))
    assert len({r.seconds for r in records}) == 1 and records[0].seconds > 0


def test_batched_audit_rejects_a_bad_batch_size(tiny_lm):
    with pytest.raises(ValueError, match="batch_size"):
        audit.generate_batch_with_audit(tiny_lm, _head("mean"), PROMPTS, batch_size=0)
