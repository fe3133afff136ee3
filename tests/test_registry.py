"""Registry: registration, the gate both ways, forced promotion, rollback, atomic failure, listing."""
from __future__ import annotations

import json
import os

import mlflow
import pandas as pd
import pytest

from components.registry import register
from components.registry import promote
from components.lm.source import ModelConfig
from components.registry.promote import PromoteConfig, PromotionRefused

GOOD = {"response_asr": 0.2, "reasoning_asr": 0.3, "refusal_rate": 0.8, "over_refusal": 0.1, "utility_nll": 3.0}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def model_folder(tiny_model_dir, tmp_path_factory):
    """A pipeline-output folder: base reference + LoRA adapter + head, like data/train_rl."""
    from components.head.model import SafetyHead
    from components.train_rl import TrainRLConfig, run

    head_dir = SafetyHead(32, 16, 8).save(tmp_path_factory.mktemp("h") / "head")
    prompts = pd.DataFrame({"prompt": [f"Harm {i}?" for i in range(4)], "prompt_kind": ["harmful"] * 4,
                            "split": ["train", "train", "val", "val"]})
    out = tmp_path_factory.mktemp("rl") / "train_rl"
    cfg = TrainRLConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, minibatch_size=4,
                        judge="keyword", probe_prompts=1, lora_r=2, lora_alpha=4)
    run(cfg, ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu"), prompts, head_dir, out,
        tmp_path_factory.mktemp("ckpt"))
    return out


def _register(folder, tiny_model_dir, metrics, cfg):
    return register.run(folder, metrics, {**GOOD, "response_asr": 0.6}, {"git_sha": "abc"}, cfg,
                        ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu"))


def test_register_promote_rollback(store, model_folder, tiny_model_dir, tmp_path):
    cfg = PromoteConfig(model_name="unit-model")
    v1 = _register(model_folder, tiny_model_dir, GOOD, cfg)
    assert _register(model_folder, tiny_model_dir, GOOD, cfg) == v1  # idempotent: no duplicate
    assert str(promote.version_by_alias("unit-model", "challenger").version) == v1
    first = promote.promote(cfg, actor="tester")
    assert first["promoted"] and str(promote.version_by_alias("unit-model", "champion").version) == v1

    # a worse challenger is refused and nothing changes
    worse = tmp_path / "worse"
    import shutil
    shutil.copytree(model_folder, worse)
    (worse / "model.json").write_text(json.dumps({**json.loads((worse / "model.json").read_text()), "note": "v2"}))
    v2 = _register(worse, tiny_model_dir, {**GOOD, "response_asr": 0.5}, cfg)
    with pytest.raises(PromotionRefused, match="failed the promotion gate") as err:
        promote.promote(cfg)
    assert not err.value.checks[0]["passed"]
    assert str(promote.version_by_alias("unit-model", "champion").version) == v1

    with pytest.raises(Exception, match="--reason"):
        promote.promote(cfg, force=True)
    forced = promote.promote(cfg, force=True, reason="hotfix accepted by release board", actor="rm")
    champ = promote.version_by_alias("unit-model", "champion")
    assert forced["promoted"] and str(champ.version) == v2
    assert champ.tags["promotion.forced"] == "true" and champ.tags["promotion.by"] == "rm"
    assert champ.tags["promotion.previous_champion"] == v1

    rows = promote.list_versions("unit-model")
    assert [r["version"] for r in rows] == [v2, v1] and "champion" in rows[0]["aliases"]

    back = promote.rollback(cfg, reason="regression in prod")
    assert back == {"champion": v1, "demoted": v2}
    assert str(promote.version_by_alias("unit-model", "champion").version) == v1


def test_failed_promotion_leaves_registry_unchanged(store, model_folder, tiny_model_dir, monkeypatch):
    cfg = PromoteConfig(model_name="atomic-model")
    v1 = _register(model_folder, tiny_model_dir, GOOD, cfg)
    c = promote.client()

    def boom(*a, **k):
        raise RuntimeError("registry went away mid-promotion")

    monkeypatch.setattr(type(c), "update_model_version", boom)
    with pytest.raises(RuntimeError, match="mid-promotion"):
        promote.promote(cfg)
    monkeypatch.undo()
    assert promote.version_by_alias("atomic-model", "champion") is None  # alias move undone
    tags = promote.client().get_model_version("atomic-model", v1).tags
    assert not any(k.startswith("promotion.") for k in tags)  # tags undone


def test_gate_rules():
    cfg = PromoteConfig(max_over_refusal=0.3)
    ok = promote.gate(GOOD, {**GOOD, "response_asr": 0.25}, cfg)
    assert all(c["passed"] for c in ok)
    bad = promote.gate({**GOOD, "over_refusal": 0.9, "utility_nll": 9.0}, GOOD, cfg)
    assert [c["passed"] for c in bad] == [True, False, False]
    no_champion = promote.gate({**GOOD, "base.response_asr": 0.1, "base.utility_nll": 3.0}, None, cfg)
    assert not no_champion[0]["passed"]  # worse than the base model
    assert not promote.gate({}, None, cfg)[0]["passed"]  # missing metrics fail


def test_registered_model_loads_and_generates(store, model_folder, tiny_model_dir):
    cfg = PromoteConfig(model_name="serve-model")
    _register(model_folder, tiny_model_dir, GOOD, cfg)
    promote.promote(cfg)
    model = mlflow.pyfunc.load_model("models:/serve-model@champion")
    out = model.predict(pd.DataFrame({"prompt": ["Hello there", "How do I make a weapon?"]}),
                        params={"max_new_tokens": 4})
    assert list(out.columns) == ["prompt", "completion", "trace", "response", "latent_p_safe", "latent_r_lat"]
    assert len(out) == 2 and out.latent_p_safe.between(0, 1).all()
