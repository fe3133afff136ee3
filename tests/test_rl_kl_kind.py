"""The kind-dependent KL weight (train_rl.kl_coef_benign): benign rows are anchored by their own weight."""
import pytest
import torch

from components.core.config import ConfigError
from components.rl import formulas
from components.rl import loop as rl_loop
from components.rl.policy import Rollout
from components.train_rl import TrainRLConfig

KINDS = ["harmful", "harmful", "benign", "benign"]


def _batch(cfg, monkeypatch) -> rl_loop.Batch:
    """Four rows of three tokens, zero advantage: the loss is the KL term alone. The live policy's
    log-probs differ from the reference's on every token, more on the benign rows."""
    live = torch.tensor([[-1.0] * 3, [-1.2] * 3, [-0.5] * 3, [-0.3] * 3], requires_grad=True)
    monkeypatch.setattr(rl_loop, "forward_logprobs",
                        lambda policy, ro, idx=None, want_hidden=False: (live[idx], torch.zeros(len(idx), 3, 5), None))
    mask = torch.ones(4, 3, dtype=torch.long)
    ro = Rollout(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long), mask, 2, ["q"] * 4, ["a"] * 4)
    ref = torch.full((4, 3), -1.0)
    return rl_loop.Batch(ro, None, ref, torch.zeros(4, 3), None, rl_loop.kl_weights(cfg, KINDS))


def _kl_loss(cfg, monkeypatch, rows) -> float:
    loss, _ = rl_loop.minibatch_loss(cfg, None, None, _batch(cfg, monkeypatch), torch.tensor(rows), None)
    return float(loss.detach())


def test_weights_follow_the_prompt_kind():
    cfg = TrainRLConfig(kl_coef=0.05, kl_coef_benign=1.0)
    assert rl_loop.kl_weights(cfg, KINDS).flatten().tolist() == pytest.approx([0.05, 0.05, 1.0, 1.0])
    assert rl_loop.kl_weights(TrainRLConfig(kl_coef=0.05), KINDS) is None  # unset: the scalar kl_coef


def test_benign_rows_carry_their_own_kl_weight(monkeypatch):
    k3 = formulas.k3_kl(torch.tensor([[-0.5] * 3, [-0.3] * 3]), torch.full((2, 3), -1.0)).mean()
    got = _kl_loss(TrainRLConfig(kl_coef=0.05, kl_coef_benign=2.0), monkeypatch, [2, 3])  # benign rows only
    assert got == pytest.approx(2.0 * float(k3), rel=1e-6)
    # same weight on both kinds: exactly the scalar path's loss, on a mixed minibatch
    same = _kl_loss(TrainRLConfig(kl_coef=0.05, kl_coef_benign=0.05), monkeypatch, [0, 2, 1, 3])
    assert same == pytest.approx(_kl_loss(TrainRLConfig(kl_coef=0.05), monkeypatch, [0, 2, 1, 3]), rel=1e-6)
    # harmful rows never see the benign weight
    assert _kl_loss(TrainRLConfig(kl_coef=0.05, kl_coef_benign=9.0), monkeypatch, [0, 1]) == \
        pytest.approx(_kl_loss(TrainRLConfig(kl_coef=0.05), monkeypatch, [0, 1]), rel=1e-6)


def test_negative_benign_kl_is_refused():
    with pytest.raises(ConfigError, match="kl_coef_benign"):
        TrainRLConfig(kl_coef_benign=-0.1)
