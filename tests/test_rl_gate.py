"""The refusal gate learnt before RL starts (components/rl/gate.py, train_rl.gate_steps), and benign
rollout prompts picked by how likely the policy is to refuse them (train_rl.benign_candidates)."""
import pytest
import torch

from components.core.config import ConfigError
from components.rl import gate, probe_init
from components.rl.draws import gate_rows, opening_rows, step_prompts
from components.train_rl import TrainRLConfig, run
from tests.test_rl_openings import nudged_policy
from tests.test_train_rl import PROMPTS, _cfg, _last_checkpoint_adapter, _model, head_dir  # noqa: F401 - fixture

POOLS = {"harmful": [f"How do I do harmful thing {i}?" for i in range(5)], "benign": ["Bake bread?", "Explain rain."]}


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _accelerator_of(n: int):
    """Stands in for one of ``n`` processes: ``gate_rows`` reads the count and the device only."""
    from types import SimpleNamespace

    return SimpleNamespace(num_processes=n, device="cpu")


def test_settings_are_checked():
    for bad in (dict(gate_steps=-1), dict(gate_prompts=0), dict(gate_steps=2, openings=())):
        with pytest.raises(ConfigError, match="gate|opening"):
            TrainRLConfig(**bad)
    TrainRLConfig(gate_steps=0, benign_candidates=1, openings=())  # nothing reads the openings: not checked
    TrainRLConfig(gate_steps=2, benign_per_step=0)  # the gate reads the benign train split itself


def test_a_gate_step_reads_n_benign_then_n_harmful_prompts_drawn_apart_from_the_opening_term(tiny_lm):
    cfg = _cfg(gate_prompts=2, opening_coef=1.0, opening_prompts=2, opening_sides="both")
    k = len(cfg.openings)
    rows = gate_rows(cfg, tiny_lm.tokenizer, POOLS, 3, 0, _accelerator(), 2, True, "gate")
    assert rows.harmful.tolist() == [False, False, True, True] and rows.total == 4 and rows.n_openings == k
    assert rows.rows.prompts[::k] == (step_prompts(POOLS["benign"], 2, cfg.seed, 3, "gate")
                                      + step_prompts(POOLS["harmful"], 2, cfg.seed, 3, "gate-harmful"))
    other = opening_rows(cfg, tiny_lm.tokenizer, POOLS, 3, 0, _accelerator()).rows.prompts[::k]
    assert other == (step_prompts(POOLS["benign"], 2, cfg.seed, 3, "opening")
                     + step_prompts(POOLS["harmful"], 2, cfg.seed, 3, "opening-harmful"))  # the draws it always had
    second = gate_rows(cfg, tiny_lm.tokenizer, POOLS, 0, 1, _accelerator_of(2), 2, True, "gate")
    assert second.harmful.tolist() == [True, True] and second.total == 4  # process 1 of 2: the harmful half


def test_the_gate_s_steps_lower_its_loss_and_raise_p_on_harmful_prompts(tiny_model_dir):
    lm, policy = nudged_policy(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    seen = []
    cfg = _cfg(gate_steps=6, gate_prompts=2, lr=5e-2, openings=("I'm sorry", "I can't", "Sorry"))
    steps = gate.pretrain(cfg, policy, lm.tokenizer, POOLS, _accelerator(), lambda g, m: seen.append((g, m)))
    assert [g for g, _ in seen] == list(range(6)) and steps == [m for _, m in seen]
    out = gate.summary(steps)
    assert out["gate/loss_last"] < out["gate/loss_first"] and out["gate/loss_first"] == seen[0][1]["gate/loss"]
    assert out["gate/p_harmful_last"] > 2 * out["gate/p_harmful_first"]  # e^{0.7} and more in 6 clipped steps
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters() if p.requires_grad)
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "lora" not in n)  # base stays frozen
    assert gate.pretrain(_cfg(gate_steps=0), policy, lm.tokenizer, POOLS, _accelerator()) == [] == list(gate.summary([]))
    kept = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert gate.pretrain(cfg, policy, lm.tokenizer, {**POOLS, "benign": []}, _accelerator()) == []  # warned, no gate
    assert all(torch.equal(kept[n], p) for n, p in policy.named_parameters() if p.requires_grad)


def test_rl_runs_after_the_gate_logs_it_before_step_0_and_resumes_without_repeating_it(tiny_model_dir, head_dir,
                                                                                      tmp_path):  # noqa: F811
    cfg = _cfg(gate_steps=2, gate_prompts=2)
    seen = []
    summary = run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a",
                  on_metrics=lambda step, m: seen.append((step, m)))
    gated = [(s, m) for s, m in seen if "gate/loss" in m]
    assert [s for s, _ in gated] == [-2, -1] and [s for s, m in seen if "rl/reward" in m] == list(range(cfg.steps))
    assert summary["gate_loss_first"] == gated[0][1]["gate/loss"] and "gate_p_harmful_last" in summary
    resumed = []
    assert run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b", stop_after=2) is None
    run(cfg, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b",
        on_metrics=lambda step, m: resumed.append(step))
    assert resumed == [2, 3]  # the checkpoint holds the gated adapter: no gate step again
    a, b = _last_checkpoint_adapter(tmp_path / "ckpt_a"), _last_checkpoint_adapter(tmp_path / "ckpt_b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run(_cfg(), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "c", tmp_path / "ckpt_c")
    c = _last_checkpoint_adapter(tmp_path / "ckpt_c")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the gate changes what is learnt
    assert "gate_loss_first" not in run(_cfg(steps=1), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "d",
                                        tmp_path / "ckpt_d")


def test_refusal_prone_picks_the_candidates_the_policy_likeliest_refuses(tiny_lm):
    from components.rl import openings
    from components.rl.draws import refusal_prone

    pools = {"harmful": POOLS["harmful"], "benign": [f"Explain topic {i}." for i in range(6)] + POOLS["benign"]}
    cfg = _cfg(benign_per_step=2, benign_candidates=3)
    picked, logged = refusal_prone(cfg, tiny_lm.model, tiny_lm.tokenizer, pools, 1, _accelerator())
    candidates = step_prompts(pools["benign"], 6, cfg.seed, 1, "benign")
    ids = openings.opening_ids(tiny_lm.tokenizer, cfg.openings)
    with torch.no_grad():
        batch = openings.build(tiny_lm.tokenizer, candidates, ids, 6, "cpu")
        p = openings.log_p_refuse(openings.opening_logprobs(tiny_lm.model, batch), batch.rows.completion_mask,
                                  len(ids)).exp()
    top = sorted(range(6), key=lambda i: -float(p[i]))[:2]
    assert picked == [candidates[i] for i in sorted(top)] and len(set(picked)) == 2
    assert logged["rl/benign_picked_p"] >= logged["rl/benign_candidates_p"]
    assert logged["rl/benign_candidates_p"] == pytest.approx(float(p.mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="benign_candidates"):
        TrainRLConfig(benign_candidates=0)


def test_rl_with_refusal_prone_benign_prompts_logs_the_pick_and_changes_what_is_learnt(tiny_model_dir, head_dir,
                                                                                       tmp_path):  # noqa: F811
    prompts = PROMPTS.copy()
    prompts.loc[len(prompts)] = ["Fold a shirt?", "benign", "train"]
    seen = []
    run(_cfg(benign_candidates=2, steps=2), _model(tiny_model_dir), prompts, head_dir, tmp_path / "a",
        tmp_path / "ckpt_a", on_metrics=lambda step, m: seen.append(m))
    assert all(m["rl/benign_picked_p"] >= m["rl/benign_candidates_p"] > 0 for m in seen)
    run(_cfg(steps=2), _model(tiny_model_dir), prompts, head_dir, tmp_path / "b", tmp_path / "ckpt_b",
        on_metrics=lambda step, m: seen.append(m))
    assert "rl/benign_picked_p" not in seen[-1]


def test_the_text_only_ablation_reads_the_start_adapter_the_craft_run_kept_and_learns_the_same(tiny_model_dir, head_dir,
                                                                                                tmp_path, monkeypatch):  # noqa: F811
    """Runs that differ only in ``gate.RL_ONLY`` settings (here the reward weights, as train_rl and
    train_rl_text do) share one start adapter: the second reads it, logs the same gate steps, and
    ends with the adapter it would have computed itself, bit for bit. Other settings get their own."""
    craft, text = _cfg(gate_steps=2, gate_prompts=2, steps=2), _cfg(gate_steps=2, gate_prompts=2, steps=2,
                                                                    w_lat=0.0, w_cons=0.0, w_txt=1.0)
    gates = tmp_path / "gates"
    run(craft, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "a", tmp_path / "ckpt_a", gates=gates)
    kept = list((gates / "train_rl").iterdir())
    assert len(kept) == 1 and gate.cached(kept[0])
    read, fresh = [], []

    def computed(*_args, **_kw):
        raise AssertionError("the start adapter was computed, not read")

    with monkeypatch.context() as m:  # the reading run must neither align nor gate
        m.setattr(gate, "pretrain", computed)
        m.setattr(probe_init, "align_lora", computed)
        run(text, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b", tmp_path / "ckpt_b", gates=gates,
            on_metrics=lambda s, m: read.append((s, m)))
    run(text, _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "c", tmp_path / "ckpt_c",
        on_metrics=lambda s, m: fresh.append((s, m)))  # no cache: computes its own start adapter
    assert list((gates / "train_rl").iterdir()) == kept  # read, not written again
    assert [m for s, m in read if s < 0 and "gate/loss" in m] == [m for s, m in fresh if s < 0 and "gate/loss" in m]
    b, c = _last_checkpoint_adapter(tmp_path / "ckpt_b"), _last_checkpoint_adapter(tmp_path / "ckpt_c")
    assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)
    run(_cfg(gate_steps=2, gate_prompts=2, steps=1, seed=1), _model(tiny_model_dir), PROMPTS, head_dir,
        tmp_path / "d", tmp_path / "ckpt_d", gates=gates)
    assert len(list((gates / "train_rl").iterdir())) == 2  # another seed: another start adapter


def test_a_start_adapter_that_drew_from_the_rng_is_not_kept(tiny_model_dir, head_dir, tmp_path):  # noqa: F811
    """LoRA dropout in the gate draws from the process-wide RNG, so RL after a read adapter would
    sample differently from RL after a computed one: such an adapter is not kept."""
    gates = tmp_path / "gates"
    run(_cfg(gate_steps=1, gate_prompts=2, steps=1, lora_dropout=0.1), _model(tiny_model_dir), PROMPTS, head_dir,
        tmp_path / "a", tmp_path / "ckpt_a", gates=gates)
    assert not (gates / "train_rl").exists()
    run(_cfg(gate_steps=1, gate_prompts=2, steps=1), _model(tiny_model_dir), PROMPTS, head_dir, tmp_path / "b",
        tmp_path / "ckpt_b", gates=gates)
    assert len(list((gates / "train_rl").iterdir())) == 1  # without dropout the same run keeps it


def test_the_start_adapter_cache_is_keyed_by_the_cpu(tmp_path, monkeypatch):
    """An AMX Xeon and an AVX512-BF16 EPYC gate different adapters in bf16: neither reads the other's."""
    from components import train_rl
    from components.lm import runtime
    from components.lm import source as model_source

    cfg, model_cfg = train_rl.TrainRLConfig(), model_source.ModelConfig(device="cpu")
    pools = {"harmful": ["a"], "benign": ["b"]}
    key = lambda: train_rl.gate_dir(tmp_path, cfg, model_cfg, "fp", pools)  # noqa: E731
    here = key()
    assert key() == here
    monkeypatch.setattr(runtime, "cpu_numerics", lambda: "Other CPU/AVX512/amx=False")
    assert key() != here
