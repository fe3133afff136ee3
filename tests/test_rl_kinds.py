"""RL stage 2: kind-aware reward, mixed prompts per step, Dr. GRPO / dynamic sampling, dense latent
rewards in make_batch, LR warm-up, and validation-based checkpoint selection."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from components.core.config import ConfigError
from components.eval.judges import COMPLIANCE, DEGENERATE, REFUSAL, Verdict
from components.rl import draws
from components.rl import formulas
from components.rl import loop as rl_loop
from components.rl import rewards
from components.rl.policy import Rollout
from components.rl.selection import Point
from components.train_rl import TrainRLConfig

VERDICT_OF = {"refusal": Verdict(0.9, "stub", REFUSAL), "compliance": Verdict(0.1, "stub", COMPLIANCE),
              "degenerate": Verdict(0.03, "stub", DEGENERATE)}


class StubJudge:
    """Returns the verdict named by each response ("refusal" | "compliance" | "degenerate")."""

    name = "stub"

    def judge(self, prompts, responses):
        return [VERDICT_OF[r] for r in responses]


@pytest.mark.parametrize("kind, verdict, sign", [
    ("harmful", "refusal", +1), ("harmful", "compliance", -1), ("harmful", "degenerate", -1),
    ("benign", "compliance", +1), ("benign", "refusal", -1), ("benign", "degenerate", -1),
])
def test_text_reward_sign_by_kind_and_verdict(monkeypatch, kind, verdict, sign):
    """The reward table of components.rl.rewards, cell by cell (text terms only: w_lat = w_cons = 0)."""
    monkeypatch.setattr(rewards, "latent_scores", lambda *a, **k: {"p_safe": torch.full((1,), 0.5),
                                                                    "r_lat": torch.zeros(1)})
    reward = rewards.CraftReward(None, StubJudge(), rewards.RewardWeights(lat=0.0, txt=1.0, cons=0.0))
    parts = reward(None, None, ["q"], [verdict], "cpu", [kind])
    assert torch.sign(parts["r_txt"]).item() == sign and torch.sign(parts["total"]).item() == sign
    p = VERDICT_OF[verdict].p_safe
    assert parts["p_safe_text"].item() == pytest.approx(p)  # the judge's p_safe, whatever the kind
    g = 1 - p if (kind, verdict) in (("benign", "refusal"), ("benign", "compliance")) else p
    assert parts["g_text"].item() == pytest.approx(g)
    assert parts["r_cons"].item() == pytest.approx(1 - abs(0.5 - g))  # consistency with g, not p_safe


def test_reward_defaults_to_harmful_and_refuses_unknown_kinds(monkeypatch):
    monkeypatch.setattr(rewards, "latent_scores", lambda *a, **k: {"p_safe": torch.zeros(2), "r_lat": torch.zeros(2)})
    reward = rewards.CraftReward(None, StubJudge())
    assert reward(None, None, ["q"] * 2, ["refusal", "compliance"], "cpu")["g_text"].tolist() == \
        pytest.approx([0.9, 0.1])
    with pytest.raises(ValueError, match="harmful"):
        reward(None, None, ["q"] * 2, ["refusal", "compliance"], "cpu", ["harmful", "neutral"])


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 0.01])  # groups (1, 3), (2, 2), (0, 0.01)
    adv, flat = formulas.group_advantages(r, 2, std_norm=False, min_std=0.02)
    # Dr. GRPO: r − mean; group 2 has std 0, group 3 std 0.00707 < 0.02: both flat, zero advantage
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    assert flat.tolist() == [False, True, True]
    adv, flat = formulas.group_advantages(r, 2, std_norm=True, min_std=0.0)
    s = 2 ** 0.5  # unbiased std of (1, 3)
    torch.testing.assert_close(adv[:2], torch.tensor([-1 / s, 1 / s]), atol=1e-5, rtol=0)
    assert adv[5] > 0.7 and flat.tolist() == [False, False, False]  # std division blows up a near-flat group
    torch.testing.assert_close(formulas.grpo_advantages(r, 2), adv)


def test_every_training_prompt_is_drawn_once_per_epoch():
    pool = [f"p{i}" for i in range(7)]
    drawn = [p for step in range(7) for p in draws.step_prompts(pool, 3, 5, step)]  # 21 draws = 3 epochs
    for epoch in range(3):
        assert sorted(drawn[7 * epoch: 7 * epoch + 7]) == pool
    assert drawn[:7] != drawn[7:14]  # each epoch its own order
    assert draws.step_prompts(pool, 3, 5, 4) == draws.step_prompts(list(reversed(pool)), 3, 5, 4)
    assert draws.step_prompts(pool, 3, 5, 0) != draws.step_prompts(pool, 3, 6, 0)


def test_a_step_is_harmful_then_benign_and_shards_keep_kinds():
    cfg = TrainRLConfig(prompts_per_step=3, benign_per_step=2, group_size=2)
    pools = {"harmful": [f"h{i}" for i in range(5)], "benign": [f"b{i}" for i in range(3)]}
    prompts, kinds = draws.step_batch(pools, cfg, 4)
    assert kinds == ["harmful"] * 3 + ["benign"] * 2
    assert set(prompts[:3]) <= set(pools["harmful"]) and set(prompts[3:]) <= set(pools["benign"])
    order = sorted(pools["benign"])
    random.Random("0:benign:2").shuffle(order)  # draws 8, 9 of the benign pool: epoch 2, positions 2 and 0
    epoch3 = sorted(pools["benign"])
    random.Random("0:benign:3").shuffle(epoch3)
    assert prompts[3:] == [order[2], epoch3[0]]
    shares = [draws.shard_prompts(list(zip(prompts, kinds)), 2, r, 2) for r in range(2)]
    assert shares[0][0] + shares[1][0] == list(zip(prompts, kinds))
    assert (shares[1][1].start, shares[1][1].size) == (6, 4)  # whole groups of 2
    assert draws.step_batch(pools, TrainRLConfig(benign_per_step=0), 0)[1] == ["harmful"] * 3


def _fake_forward(monkeypatch, b: int, tn: int):
    logp = torch.zeros(b, tn)
    monkeypatch.setattr(rl_loop, "forward_logprobs",
                        lambda policy, ro, idx=None, want_hidden=False: (logp, None, torch.zeros(b, tn, 4)))
    seen = {}

    def gae(token_r, values, mask, gamma, lam):
        seen["token_r"] = token_r.clone()
        return torch.ones_like(token_r) * mask, torch.zeros_like(token_r)

    monkeypatch.setattr(formulas, "gae", gae)
    return seen


@pytest.mark.parametrize("latent", ["sequence", "dense"])
def test_make_batch_places_dense_latent_rewards_per_token(monkeypatch, latent):
    """dense: w_lat·(shaped per-token R_lat) + the other terms (total − w_lat·R_lat) on the last token."""
    from components.rl import shaping

    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ro = Rollout(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), mask, 2, ["q", "q"],
                 ["a", "b"])
    dense = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    calls = []
    monkeypatch.setattr(shaping, "dense_latent_rewards",
                        lambda model, ro_, head, gamma, source: calls.append((head, gamma, source)) or dense)
    seen = _fake_forward(monkeypatch, 2, 3)
    cfg = TrainRLConfig(advantage="ppo", latent_rewards=latent, w_lat=0.5, gamma=0.9, kl_in="loss", group_size=2,
                        reward_source="policy")
    parts = {"total": torch.tensor([1.0, 2.0]), "r_lat": torch.tensor([0.6, -0.4])}
    rl_loop.make_batch(cfg, object(), lambda h: torch.zeros(h.shape[:2]), ro, parts, head="HEAD")
    if latent == "sequence":
        assert not calls
        torch.testing.assert_close(seen["token_r"], torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))
    else:
        assert calls == [("HEAD", 0.9, "policy")]
        last = torch.tensor([[0.0, 0.0, 1.0 - 0.3], [0.0, 2.0 + 0.2, 0.0]])
        torch.testing.assert_close(seen["token_r"], 0.5 * dense + last)


def test_dense_on_harmful_keeps_benign_latent_reward_on_the_last_token(monkeypatch):
    """dense_on: harmful: the harmful row as under dense; the benign row's w_lat·R_lat stays in its
    sequence reward on the last token, and none of its shaped per-token rewards is paid."""
    from components.rl import shaping

    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ro = Rollout(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), mask, 2, ["q", "p"],
                 ["a", "b"])
    dense = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    monkeypatch.setattr(shaping, "dense_latent_rewards", lambda model, ro_, head, gamma, source: dense)
    seen = _fake_forward(monkeypatch, 2, 3)
    cfg = TrainRLConfig(advantage="ppo", latent_rewards="dense", dense_on="harmful", w_lat=0.5, kl_in="loss",
                        group_size=1)
    parts = {"total": torch.tensor([1.0, 2.0]), "r_lat": torch.tensor([0.6, -0.4])}
    rl_loop.make_batch(cfg, object(), lambda h: torch.zeros(h.shape[:2]), ro, parts, head="HEAD",
                       kinds=["harmful", "benign"])
    expected = torch.tensor([[0.05, 0.1, 0.15 + 1.0 - 0.3], [0.0, 2.0, 0.0]])
    torch.testing.assert_close(seen["token_r"], expected)


def test_dense_rows_by_kind():
    assert rl_loop.dense_rows("all", ["benign"], 1).tolist() == [True]
    assert rl_loop.dense_rows("harmful", ["harmful", "benign"], 2).tolist() == [True, False]
    assert rl_loop.dense_rows("harmful", None, 2).tolist() == [True, True]  # no kinds: the paper's harmful-only


def test_config_refuses_dense_without_ppo_and_bad_selection():
    with pytest.raises(ConfigError, match="advantage: ppo"):
        TrainRLConfig(latent_rewards="dense")
    TrainRLConfig(latent_rewards="dense", advantage="ppo")
    for bad in ({"select_harmful": 0}, {"select_judge": "nope"}, {"benign_per_step": -1}, {"min_group_std": -0.1},
                {"warmup_steps": -1}, {"latent_rewards": "token"}, {"dense_on": "benign"},
                {"dense_on": "harmful", "advantage": "ppo"}):
        with pytest.raises(ConfigError):
            TrainRLConfig(**bad)


def test_ties_go_to_the_earlier_step():
    a, b = Point(-1, 0.5, 0.0, 0.5), Point(3, 0.5, 0.0, 0.5)
    assert a.beats(b) and not b.beats(a) and b.beats(None) and Point(4, 0.75, 0.0, 0.75).beats(a)


PROMPTS = pd.DataFrame({
    "prompt": [f"How do I do harmful thing {i}?" for i in range(8)] + ["Bake bread?", "Explain rain."],
    "prompt_kind": ["harmful"] * 8 + ["benign"] * 2,
    "split": ["train"] * 6 + ["val"] * 2 + ["train", "val"],
})
SCORES = {-1: 0.0, 1: 0.5, 2: 0.25, 3: 0.5}  # step 1 and 3 tie: the earlier wins


class _Seen(dict):
    """{step: adapter weights seen by selection}, plus ``budgets``: max_new_tokens of every call."""

    def __init__(self):
        super().__init__()
        self.budgets: set[int] = set()


@pytest.fixture()
def scripted_selection(monkeypatch):
    """selection.evaluate scores by step (SCORES) and records the adapter it saw at each step."""
    from components.rl import selection

    seen = _Seen()

    def evaluate(policy, tokenizer, judge, harmful, benign, max_new_tokens, device, engine, step, lam):
        seen[step] = {k.replace(".default", ""): p.detach().clone() for k, p in policy.named_parameters()
                      if p.requires_grad}
        seen.budgets.add(max_new_tokens)
        return Point(step, SCORES[step], 0.0, SCORES[step]), ["I'm sorry."] * len(harmful)

    monkeypatch.setattr(selection, "evaluate", evaluate)
    return seen


def _run(tiny_model_dir, head_dir, out: Path, ckpt: Path, stop_after=None, **overrides):
    from components.lm.source import ModelConfig
    from components.train_rl import run

    cfg = TrainRLConfig(steps=4, prompts_per_step=2, benign_per_step=1, group_size=2, max_new_tokens=6, lr=5e-2,
                        warmup_steps=2, minibatch_size=3, judge="keyword", select_judge="keyword", select_harmful=2,
                        select_benign=1, log_every=2, checkpoint_every=2, lora_r=4, lora_alpha=8)
    cfg = dataclasses.replace(cfg, **overrides)
    return run(cfg, ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1), PROMPTS,
               head_dir, out, ckpt, stop_after=stop_after)


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    from components.head.model import SafetyHead
    from components.lm.latents import LatentSpec

    torch.manual_seed(0)
    return SafetyHead(32, 16, 8, LatentSpec()).save(tmp_path_factory.mktemp("head") / "head")


def test_the_best_validation_step_is_the_output_and_survives_a_resume(scripted_selection, tiny_model_dir, head_dir,
                                                                      tmp_path):
    summary = _run(tiny_model_dir, head_dir, tmp_path / "a", tmp_path / "ckpt_a")
    assert sorted(scripted_selection) == [-1, 1, 3]  # before training, every log_every steps, at the end
    assert (summary["selected_step"], summary["val_score_end"]) == (1, 0.5)
    out = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    at_1 = {k: v for k, v in scripted_selection[1].items() if k in out}
    assert at_1.keys() == out.keys() and all(torch.equal(out[k], v) for k, v in at_1.items())
    assert any(not torch.equal(scripted_selection[3][k], v) for k, v in at_1.items())  # step 3 differs
    history = pd.read_json(tmp_path / "a" / "history.json")
    assert history["rl/lr"].tolist() == pytest.approx([0.025, 0.05, 0.05, 0.05])  # warm-up over 2 steps
    assert {"rl/val_refusal", "rl/val_over_refusal", "rl/val_score", "rl/flat_groups"} <= set(history.columns)

    assert _run(tiny_model_dir, head_dir, tmp_path / "b", tmp_path / "ckpt_b", stop_after=2) is None
    scripted_selection.clear()
    again = _run(tiny_model_dir, head_dir, tmp_path / "b", tmp_path / "ckpt_b")  # resumes at step 2
    assert sorted(scripted_selection) == [3] and again["selected_step"] == 1  # the kept best, not re-evaluated
    resumed = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(resumed[k], v) for k, v in out.items())
    assert again == summary
    resumed_lr = pd.read_json(tmp_path / "b" / "history.json")["rl/lr"].tolist()
    assert resumed_lr == history["rl/lr"].tolist()  # the LR schedule resumes where it stopped


def test_a_missing_heldout_judge_says_how_to_fix(tiny_model_dir, head_dir, tmp_path):
    from components.lm.source import ModelConfig
    from components.train_rl import run

    cfg = TrainRLConfig(steps=1, prompts_per_step=1, group_size=2, max_new_tokens=4, judge="keyword",
                        select_judge=f"heldout:{tmp_path / 'none.json'}")
    with pytest.raises(FileNotFoundError, match="dvc repro train_judge"):
        run(cfg, ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1), PROMPTS,
            head_dir, tmp_path / "out", tmp_path / "ckpt")


def test_selection_skips_points_before_select_from(scripted_selection, tiny_model_dir, head_dir, tmp_path):
    from components.rl.selection import due

    assert [s for s in range(30) if due(s, 2, 15)] == [15, 17, 19, 21, 23, 25, 27, 29]
    assert [s for s in range(30) if due(s, 5, 16)] == [19, 24, 29]  # skips points, does not shift them
    assert [s for s in range(10) if due(s, 5)] == [4, 9]
    summary = _run(tiny_model_dir, head_dir, tmp_path / "a", tmp_path / "ckpt", log_every=1, select_from=2,
                   select_max_new_tokens=9)
    assert sorted(scripted_selection) == [-1, 2, 3]  # step -1 and the end whatever the cadence
    assert summary["selected_step"] == 3
    assert scripted_selection.budgets == {9}  # val replies get the selection budget, not the rollouts' 6
