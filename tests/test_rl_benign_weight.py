"""train_rl.benign_adv_weight: benign prompts' rollouts weigh w times in the policy gradient."""
import pytest
import torch

from components.core.config import ConfigError
from components.rl import loop as rl_loop
from components.rl.policy import Rollout
from components.train_rl import TrainRLConfig

KINDS = ["harmful"] * 2 + ["benign"] * 2  # one harmful group, one benign group, group size 2


def _batch(cfg, monkeypatch) -> rl_loop.Batch:
    """GRPO advantages of two groups of two rows, three generated tokens each (the last row two)."""
    monkeypatch.setattr(rl_loop, "forward_logprobs",
                        lambda policy, ro, idx=None, want_hidden=False: (torch.zeros(4, 3), None, None))
    mask = torch.tensor([[1, 1, 1]] * 3 + [[1, 1, 0]])
    ro = Rollout(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long), mask, 2, ["q"] * 4,
                 ["a"] * 4)
    parts = {"total": torch.tensor([1.0, 0.0, -0.5, 0.5])}  # group means 0.5 and 0: A = ±0.5 in each group
    return rl_loop.make_batch(cfg, object(), None, ro, parts, kinds=KINDS)


def test_benign_advantages_are_scaled_and_harmful_ones_kept(monkeypatch):
    got = _batch(TrainRLConfig(group_size=2, benign_adv_weight=3.0), monkeypatch).adv
    want = torch.tensor([[0.5] * 3, [-0.5] * 3, [-1.5] * 3, [1.5, 1.5, 0.0]])
    torch.testing.assert_close(got, want)


def test_weight_one_is_the_plain_arithmetic(monkeypatch):
    assert rl_loop.adv_weights(TrainRLConfig(), KINDS) is None
    got = _batch(TrainRLConfig(group_size=2), monkeypatch).adv
    torch.testing.assert_close(got, torch.tensor([[0.5] * 3, [-0.5] * 3, [-0.5] * 3, [0.5, 0.5, 0.0]]))


def test_the_weight_scales_the_benign_policy_gradient(monkeypatch):
    """The surrogate's gradient on a benign row is w times the unweighted one; a harmful row's is unchanged."""
    def grads(w: float) -> torch.Tensor:
        cfg = TrainRLConfig(group_size=2, benign_adv_weight=w, kl_coef=0.0)
        batch = _batch(cfg, monkeypatch)
        live = torch.full((4, 3), -1.0, requires_grad=True)
        monkeypatch.setattr(rl_loop, "forward_logprobs",
                            lambda policy, ro, idx=None, want_hidden=False: (live[idx], torch.zeros(len(idx), 3, 5), None))
        batch.old_logp = torch.full((4, 3), -1.0)
        for row in range(4):
            loss, _ = rl_loop.minibatch_loss(cfg, None, None, batch, torch.tensor([row]), None)
            loss.backward()
        return live.grad.clone()

    plain, weighted = grads(1.0), grads(2.5)
    torch.testing.assert_close(weighted[:2], plain[:2])
    torch.testing.assert_close(weighted[2:], 2.5 * plain[2:])
    assert plain[2:].abs().sum() > 0


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_non_positive_weight_is_refused(bad):
    with pytest.raises(ConfigError, match="benign_adv_weight"):
        TrainRLConfig(benign_adv_weight=bad)


def test_ppo_scales_the_whitened_advantages_not_the_value_targets(monkeypatch):
    def batch(w: float) -> rl_loop.Batch:
        cfg = TrainRLConfig(advantage="ppo", group_size=2, benign_adv_weight=w, kl_in="loss")
        monkeypatch.setattr(rl_loop, "forward_logprobs",
                            lambda policy, ro, idx=None, want_hidden=False: (torch.zeros(4, 3), None, torch.zeros(4, 3, 4)))
        mask = torch.ones(4, 3, dtype=torch.long)
        ro = Rollout(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long), mask, 2, ["q"] * 4,
                     ["a"] * 4)
        parts = {"total": torch.tensor([1.0, 0.0, -0.5, 0.5])}
        return rl_loop.make_batch(cfg, object(), lambda h: torch.zeros(h.shape[:2]), ro, parts, kinds=KINDS)

    plain, weighted = batch(1.0), batch(2.0)
    torch.testing.assert_close(weighted.adv[:2], plain.adv[:2])
    torch.testing.assert_close(weighted.adv[2:], 2.0 * plain.adv[2:])
    torch.testing.assert_close(weighted.returns, plain.returns)


def test_per_kind_puts_each_factor_on_its_rows():
    w = rl_loop.per_kind(["harmful", "benign", "benign", "harmful"], benign=3.0, harmful=0.5)
    assert w.shape == (4, 1)
    assert w.flatten().tolist() == [0.5, 3.0, 3.0, 0.5]
