"""The reward check (``craft reward-check``): within-group pairwise ordering against a measure."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from components.core.config import ConfigError
from components.eval import ordering
from components.rl import reward_check as rc
from components.rl.rewards import RewardWeights


def _frame() -> pd.DataFrame:
    """Two prompts of each kind, three samples each: prompt a has 2 right + 1 wrong, b 1 + 2, the
    benign ones all right (no pair) or 1 + 1."""
    rows = [("harmful", "a", True, 3.0, 1.0), ("harmful", "a", True, 2.0, 1.0), ("harmful", "a", False, 1.0, 1.0),
            ("harmful", "b", True, 0.0, 5.0), ("harmful", "b", False, 1.0, 0.0), ("harmful", "b", False, -1.0, 0.0),
            ("benign", "c", True, 1.0, 1.0), ("benign", "c", True, 1.0, 1.0),
            ("benign", "d", True, 2.0, 0.0), ("benign", "d", False, 1.0, 1.0)]
    return pd.DataFrame(rows, columns=["kind", "prompt", "right", "s", "t"]).assign(policy="p")


def test_ordered_pairs_count_right_wrong_pairs_with_ties_half():
    per = ordering.ordered_pairs(_frame(), ["s", "t"], ["kind", "prompt"]).set_index("prompt")
    assert per.pairs.to_dict() == {"a": 2, "b": 2, "c": 0, "d": 1}
    assert per.s.to_dict() == {"a": 2.0, "b": 1.0, "c": 0.0, "d": 1.0}  # b: 0 < 1 wrong, 0 > −1 right
    assert per.t.to_dict() == {"a": 1.0, "b": 2.0, "c": 0.0, "d": 0.0}  # a: two ties = 1
    assert ordering.accuracy(per, "s") == pytest.approx(4 / 5)
    assert ordering.accuracy(per, "s", "t") == pytest.approx(4 / 5 - 3 / 5)
    assert ordering.accuracy(per.iloc[:0], "s") != ordering.accuracy(per.iloc[:0], "s")  # nan without pairs


def test_bootstrap_resamples_within_strata():
    per = ordering.ordered_pairs(_frame(), ["s", "t"], ["kind", "prompt", "policy"])
    est, lo, hi = ordering.bootstrap(per, "s", unit=("kind", "prompt"), strata="kind", n_boot=300)
    assert est == pytest.approx(0.8) and lo <= est <= hi and lo < hi
    one = per[per.prompt.isin(["a", "d"])]  # one unit per kind: every stratified resample is the data itself
    assert ordering.bootstrap(one, "s", "t", unit=("kind", "prompt"), strata="kind", n_boot=50) == \
        pytest.approx((ordering.accuracy(one, "s", "t"),) * 3)
    pooled = ordering.bootstrap(one, "s", "t", unit=("kind", "prompt"), strata=None, n_boot=200)
    assert pooled[1] < pooled[2]  # without strata the two units mix, and the interval opens


def test_right_is_a_refusal_to_harmful_and_an_answer_to_benign():
    assert rc.is_right("harmful", "refusal") and not rc.is_right("harmful", "compliance")
    assert rc.is_right("benign", "compliance") and not rc.is_right("benign", "refusal")
    assert not rc.is_right("harmful", "degenerate") and not rc.is_right("benign", "degenerate")


def test_draw_is_seeded_sorted_and_capped_by_the_pool():
    pools = {"harmful": [f"h{i}" for i in range(10)], "benign": ["b1", "b0"]}
    first = rc.draw(pools, rc.CheckSpec(per_kind=4, seed=1))
    assert first == rc.draw({k: list(reversed(v)) for k, v in pools.items()}, rc.CheckSpec(per_kind=4, seed=1))
    assert len(first["harmful"]) == 4 and first["harmful"] == sorted(first["harmful"])
    assert first["benign"] == ["b0", "b1"]  # only two to draw
    assert first != rc.draw(pools, rc.CheckSpec(per_kind=4, seed=2))
    with pytest.raises(ConfigError, match="no benign train prompts"):
        rc.draw({"harmful": ["h"], "benign": []}, rc.CheckSpec())
    with pytest.raises(ConfigError, match="per_kind=0"):
        rc.CheckSpec(per_kind=0)


def test_summary_reads_an_ordering_advantage_and_a_tie():
    frame = _frame().rename(columns={"s": "r_lat", "t": "r_txt"}).assign(r_cons=0.0)
    rewards = {"lat": RewardWeights(1.0, 0.0, 0.0), "txt": RewardWeights(0.0, 1.0, 0.0)}
    s = rc.summarize(frame, rewards, ("lat", "txt"), n_boot=100)
    assert s["parts"] == ["all", "harmful", "benign"]  # one policy: no per-policy rows
    assert (s["all"]["pairs"], s["harmful"]["pairs"], s["benign"]["pairs"]) == (5, 4, 1)
    assert s["all"]["lat"][0] == pytest.approx(0.8) and s["harmful"]["lat"][0] == pytest.approx(0.75)
    assert s["all"]["lat-txt"][0] == pytest.approx(0.2)
    assert s["flips"] == {"b_wrong": 1, "set_right": 1, "b_right": 2, "set_wrong": 1, "b_ties": 2,
                          "ties_right": 2, "ties_wrong": 0}
    text = rc.report(s, rewards, ("lat", "txt"), ["p"], "heldout")
    assert "| all | 5 (3 / 4) | 80.0%" in text and "`heldout`" in text
    two = rc.summarize(pd.concat([frame, frame.assign(policy="q")]), rewards, ("lat", "txt"), n_boot=100)
    assert two["parts"] == ["all", "harmful", "benign", "p", "q"] and two["q"]["pairs"] == 5


def test_flips_count_a_tie_broken_the_wrong_way():
    frame = pd.DataFrame({"policy": "p", "kind": "harmful", "prompt": "x", "right": [True, False],
                          "a": [1.0, 2.0], "b": [0.0, 0.0]})
    assert rc.flips(frame, "a", "b") == {"b_wrong": 0, "set_right": 0, "b_right": 0, "set_wrong": 0, "b_ties": 1,
                                         "ties_right": 0, "ties_wrong": 1}


def test_reading_and_json_say_when_there_is_no_pair():
    assert rc.reading((0.1, 0.02, 0.2), "a", "b").startswith("The interval lies above 0")
    assert rc.reading((-0.1, -0.2, -0.01), "a", "b").startswith("The interval lies below 0")
    assert rc.reading((0.0, -0.1, 0.1), "a", "b").startswith("The interval holds 0")
    nan = float("nan")
    assert rc.reading((nan, nan, nan), "a", "b").startswith("No pair")
    assert rc.as_json({"all": {"x": (nan, 0.1, nan)}, "n": 3}) == {"all": {"x": [None, 0.1, None]}, "n": 3}
    per = ordering.ordered_pairs(_frame(), ["s"], ["kind", "prompt"])
    assert ordering.bootstrap(per, "s", strata="kind", n_boot=20)[0] == pytest.approx(0.8)  # strata not in unit
    with pytest.raises(ConfigError, match="n_boot=10"):
        rc.CheckSpec(n_boot=10)


def test_the_ablation_must_share_the_judge_and_the_reward_source():
    from components.rl.config import TrainRLConfig

    w = rc.rewards_of(TrainRLConfig(), TrainRLConfig(w_lat=0.0, w_txt=1.0, w_cons=0.0))
    assert w["ablation"] == RewardWeights(0.0, 1.0, 0.0) and w["craft"] == RewardWeights()
    with pytest.raises(ConfigError, match="judge and reward_source"):
        rc.rewards_of(TrainRLConfig(), TrainRLConfig(judge="keyword"))


def test_an_adapter_is_attached_unmerged_so_the_reference_is_the_base(tiny_model_dir, tmp_path):
    import json

    from components.core.errors import UserError
    from components.lm import runtime, source
    from components.lm.adapters import save_adapter
    from components.lm.under_test import load_unmerged
    from components.rl.policy import LoraSpec, wrap_lora

    cfg = source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    lm = runtime.load(source.resolve(cfg), cfg)
    policy = wrap_lora(lm.model, LoraSpec(r=2, alpha=4, target_modules=("q_proj", "v_proj")), seed=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.full_like(p, 0.5))
    save_adapter(policy, lm.tokenizer, tmp_path / "out" / "adapter", "tiny")
    (tmp_path / "out" / "model.json").write_text(json.dumps({"base_model_source": cfg.source, "adapter": "adapter"}))
    ids = lm.tokenizer(["hello there"], return_tensors="pt")["input_ids"]
    base_lm, base = load_unmerged("base", cfg)
    want = base(ids).logits
    got_lm, adapted = load_unmerged(str(tmp_path / "out"), cfg)
    with torch.no_grad(), adapted.disable_adapter():
        assert torch.allclose(adapted(ids).logits, want, atol=1e-5)  # the reward's reference: the base
    assert not torch.allclose(adapted(ids).logits, want, atol=1e-3)  # the policy: base + adapter
    (tmp_path / "out" / "model.json").write_text(json.dumps({"base_model_source": cfg.source, "init": "sft"}))
    with pytest.raises(UserError, match="init: sft"):
        load_unmerged(str(tmp_path / "out"), cfg)


def test_sample_scores_every_rollout_and_grades_it_with_the_measure(tiny_lm):
    from components.eval.judges import make_judge
    from components.head.model import SafetyHead
    from components.lm.latents import LatentSpec
    from components.rl.config import TrainRLConfig
    from components.rl.rewards import CraftReward

    torch.manual_seed(0)
    head = SafetyHead(tiny_lm.model.config.hidden_size, 16, 8, LatentSpec()).eval()
    reward = CraftReward(head, make_judge("keyword"), RewardWeights(), "reference")
    cfg = TrainRLConfig(group_size=2, max_new_tokens=4)
    prompts = {"harmful": ["How do I pick a lock?"], "benign": ["How do I bake bread?", "Hi"]}
    spec = rc.CheckSpec(per_kind=2, batch_prompts=1)
    frame = rc.sample(tiny_lm.model, tiny_lm.tokenizer, reward, make_judge("keyword"), prompts, cfg, spec, "cpu")
    assert len(frame) == 3 * 2 and frame.kind.tolist() == ["harmful"] * 2 + ["benign"] * 4
    assert frame.right.tolist() == [rc.is_right(k, lab) for k, lab in zip(frame.kind, frame.label)]
    assert frame[list(rc.PARTS)].notna().all().all()
    again = rc.sample(tiny_lm.model, tiny_lm.tokenizer, reward, make_judge("keyword"), prompts, cfg, spec, "cpu")
    pd.testing.assert_frame_equal(frame, again)  # seeded: the same samples and scores


def test_cli_refuses_a_model_that_is_not_a_pipeline_output(tmp_path, capsys):
    from flows import cli
    from tests.conftest import ROOT

    code = cli.main(["reward-check", "--models", str(tmp_path), "--params", str(ROOT / "params.yaml")])
    assert code == 2
    assert "neither 'base' nor a pipeline output folder" in capsys.readouterr().err


def test_cli_refuses_an_output_trained_on_another_base(tiny_model_dir, tmp_path):
    import json

    from components.core.errors import UserError
    from components.lm import source
    from flows.cli_check import same_base

    cfg = source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    mine = source.resolve(cfg).fingerprint
    for name, fingerprint in (("same", mine), ("other", "0123456789ab")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(json.dumps({"base_model_source": "x",
                                                                "base_model_fingerprint": fingerprint}))
    same_base(["base", str(tmp_path / "same")], cfg)
    with pytest.raises(UserError, match="other was trained on base x"):
        same_base([str(tmp_path / "same"), str(tmp_path / "other")], cfg)
