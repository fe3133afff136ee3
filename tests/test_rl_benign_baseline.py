"""train_rl.benign_baseline: text_zero measures benign rollouts' text reward against 0, so a benign
group whose every rollout is refused is pushed down; harmful groups keep the group mean."""
import pytest
import torch

from components.core.config import ConfigError
from components.rl import formulas
from components.rl import loop as rl_loop
from components.rl.policy import Rollout
from components.train_rl import TrainRLConfig

G = 4
KINDS = ["harmful"] * G + ["benign"] * G + ["benign"] * G  # one harmful group, two benign groups


def _parts() -> dict[str, torch.Tensor]:
    """Harmful group: mixed. Benign group 1: every rollout refused (R_txt −0.9, the totals alike:
    a flat group). Benign group 2: two refused, two answered."""
    r_txt = torch.tensor([0.9, -0.9, 0.9, -0.9] + [-0.9] * 4 + [-0.9, -0.9, 0.9, 0.9])
    r_lat = torch.tensor([0.2, -0.2, 0.1, 0.0] + [0.1] * 4 + [0.0, 0.2, 0.4, 0.2])
    return {"r_txt": r_txt, "r_lat": r_lat, "total": 0.4 * r_txt + 0.5 * r_lat}


def _adv(cfg, monkeypatch) -> torch.Tensor:
    n = len(KINDS)
    monkeypatch.setattr(rl_loop, "forward_logprobs",
                        lambda policy, ro, idx=None, want_hidden=False: (torch.zeros(n, 2), None, None))
    mask = torch.ones(n, 2, dtype=torch.long)
    ro = Rollout(torch.zeros(n, 4, dtype=torch.long), torch.ones(n, 4, dtype=torch.long), mask, 2, ["q"] * n,
                 ["a"] * n)
    return rl_loop.make_batch(cfg, object(), None, ro, _parts(), kinds=KINDS).adv[:, 0]  # [B]


def test_an_all_refused_benign_group_is_pushed_down_only_under_text_zero(monkeypatch):
    group = _adv(TrainRLConfig(group_size=G, w_txt=0.4), monkeypatch)
    zero = _adv(TrainRLConfig(group_size=G, w_txt=0.4, benign_baseline="text_zero"), monkeypatch)
    assert torch.all(group[G:2 * G] == 0)  # flat: rewards alike, no signal under the group mean
    torch.testing.assert_close(zero[G:2 * G], torch.full((G,), -0.36))  # w_txt · R_txt = 0.4 · −0.9
    torch.testing.assert_close(zero[:G], group[:G])  # the harmful group keeps its group baseline


def test_text_zero_is_the_text_term_absolute_and_the_rest_group_relative(monkeypatch):
    """A_i = w_txt·R_txt,i + (R_rest,i − mean_group R_rest) on the mixed benign group."""
    p = _parts()
    zero = _adv(TrainRLConfig(group_size=G, w_txt=0.4, benign_baseline="text_zero"), monkeypatch)
    rest = 0.5 * p["r_lat"][2 * G:]
    torch.testing.assert_close(zero[2 * G:], 0.4 * p["r_txt"][2 * G:] + rest - rest.mean())
    assert zero[2 * G:2 * G + 2].max() < 0 < zero[2 * G + 2:].min()  # refused down, answered up


def test_the_shift_is_the_benign_groups_mean_text_term():
    r_txt = torch.tensor([1.0, -1.0, -1.0, -1.0])
    got = formulas.text_zero_shift(r_txt, torch.tensor([False, False, True, True]), 2, 0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.5, -0.5]))


@pytest.mark.parametrize("bad, match", [({"benign_baseline": "zero"}, "use group .* or text_zero"),
                                        ({"benign_baseline": "text_zero", "advantage": "ppo"}, "advantage: grpo"),
                                        ({"benign_baseline": "text_zero", "std_norm": True}, "std_norm: false")])
def test_bad_settings_say_how_to_fix_them(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainRLConfig(**bad)
