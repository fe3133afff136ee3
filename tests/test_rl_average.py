"""The Polyak weight average (train_rl.ema_decay): its arithmetic, and that in a run it is what
selection grades and keeps, resumes bit for bit, and never changes what RL learns."""
from pathlib import Path

import pytest
import torch

from components.core.config import ConfigError
from components.rl import average, selection
from components.train_rl import TrainRLConfig, run
from tests.test_train_rl import PROMPTS, _best_adapter, _cfg, _last_checkpoint_adapter, _model, head_dir  # noqa: F401


class TwoWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)


def test_the_average_follows_its_recurrence_and_covers_only_trainable_weights():
    model = TwoWeights()
    avg = average.WeightAverage(model, 0.75)
    assert set(avg.shadow) == {"a"}  # frozen base weights are not averaged
    with torch.no_grad():
        model.a.copy_(torch.tensor([3.0, 2.0]))
    avg.update(model)  # 0.75·[1, 2] + 0.25·[3, 2]
    assert torch.allclose(avg.shadow["a"], torch.tensor([1.5, 2.0]))
    with torch.no_grad():
        model.a.copy_(torch.tensor([5.0, 6.0]))
    avg.update(model)  # 0.75·[1.5, 2] + 0.25·[5, 6]
    assert torch.allclose(avg.shadow["a"], torch.tensor([2.375, 3.0]))
    avg.reset(model)
    assert torch.equal(avg.shadow["a"], torch.tensor([5.0, 6.0]))


def test_applied_swaps_the_average_in_and_the_live_weights_back_even_on_an_error():
    model = TwoWeights()
    avg = average.WeightAverage(model, 0.5)
    with torch.no_grad():
        model.a.copy_(torch.tensor([3.0, 4.0]))
    avg.update(model)  # θ̄ = [2, 3]
    with avg.applied(model):
        assert torch.equal(model.a.detach(), torch.tensor([2.0, 3.0]))
    assert torch.equal(model.a.detach(), torch.tensor([3.0, 4.0]))
    with pytest.raises(RuntimeError), avg.applied(model):
        raise RuntimeError("selection failed")
    assert torch.equal(model.a.detach(), torch.tensor([3.0, 4.0]))
    with average.applied(None, model):  # off: the live weights
        assert torch.equal(model.a.detach(), torch.tensor([3.0, 4.0]))


def test_state_round_trips_and_refuses_another_adapter_s():
    model = TwoWeights()
    avg = average.WeightAverage(model, 0.5)
    avg.shadow["a"] += 1
    other = average.WeightAverage(TwoWeights(), 0.5)
    other.load_state_dict(avg.state_dict())
    assert torch.equal(other.shadow["a"], torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="another adapter"):
        other.load_state_dict({"b": torch.zeros(2)})
    assert average.maybe(model, 0.0) is None and average.maybe(model, 0.9).decay == 0.9


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_0_1_is_refused_with_a_fix(decay):
    with pytest.raises(ConfigError, match="ema_decay.*e.g. 0.8"):
        TrainRLConfig(ema_decay=decay)


def _average_at(ckpt: Path) -> dict[str, torch.Tensor]:
    last = sorted(ckpt.glob("step-*"))[-1]
    return torch.load(last / "state.pt", weights_only=True)["modules"]["weight_average"]


def test_selection_grades_the_average_which_resumes_and_leaves_rl_unchanged(tiny_model_dir, head_dir, tmp_path,
                                                                            monkeypatch):  # noqa: F811
    graded = []
    grade = selection.evaluate

    def recording(policy, *args, **kw):
        graded.append({k: p.detach().clone() for k, p in policy.named_parameters() if p.requires_grad})
        return grade(policy, *args, **kw)

    monkeypatch.setattr(selection, "evaluate", recording)
    cfg = _cfg(ema_decay=0.5)
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a")
    live, avg = _last_checkpoint_adapter(tmp_path / "ckpt_a"), _average_at(tmp_path / "ckpt_a")
    assert all(torch.equal(graded[-1][k], avg[k]) for k in avg)  # the last step's selection read θ̄
    assert any(not torch.equal(live[k], avg[k]) for k in avg)  # … which is not the live θ
    assert any(not torch.equal(graded[0][k], avg[k]) for k in avg)  # … nor the start (step −1's): it moved
    assert run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b",
               stop_after=2) is None
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b")  # resumes at step 2
    resumed = _average_at(tmp_path / "ckpt_b")
    assert all(torch.equal(avg[k], resumed[k]) for k in avg)
    assert _best_adapter(tmp_path / "ckpt_a") == _best_adapter(tmp_path / "ckpt_b")
    run(_cfg(), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "c", tmp_path / "ckpt_c")
    plain = _last_checkpoint_adapter(tmp_path / "ckpt_c")
    assert all(torch.equal(live[k], plain[k]) for k in live)  # averaging changes what is graded, not what is learnt
