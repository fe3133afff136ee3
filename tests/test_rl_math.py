"""RL formulas against hand-computed values."""
import math

import torch

from components.rl.formulas import clipped_surrogate, gae, grpo_advantages, k3_kl, masked_mean, token_logprobs


def test_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 4.0])  # groups of 2, 2, 2
    adv = grpo_advantages(r, group_size=2)
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    torch.testing.assert_close(adv[:2], torch.tensor([-1 / s, 1 / s]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[2:4], torch.zeros(2))  # equal rewards: no signal
    assert adv[4] < 0 < adv[5]


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.3                       # last real step: no bootstrap
    d1 = 0.0 + gamma * 0.3 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret[0, :3], torch.tensor([a0 + 0.5, a1 + 0.4, a2 + 0.3]))


def test_k3_kl_zero_at_equal_and_positive_otherwise():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.all(k3_kl(lp, lp) == 0)
    kl = k3_kl(torch.tensor([-1.0]), torch.tensor([-2.0]))
    torch.testing.assert_close(kl, torch.tensor([math.exp(-1) + 1 - 1]))
    assert kl > 0


def test_clipping():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 1.0]))
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, clipped = clipped_surrogate(logp, old, adv, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([-1.2, 0.8, 1.5, -2.0]))
    assert clipped.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_masked_mean_and_logprobs():
    x = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert masked_mean(x, m) == 3.0
    logits = torch.log(torch.tensor([[[0.25, 0.75]]]))
    torch.testing.assert_close(token_logprobs(logits, torch.tensor([[1]])), torch.log(torch.tensor([[0.75]])))
