"""params.yaml and the frozen stage configs agree, document themselves and explain bad values."""
import ast
import dataclasses
import inspect
import textwrap

import pytest

from components.core.config import ConfigError, build, load_params, stage_config
from components.curate import CurateConfig
from components.evaluate import EvaluateConfig
from components.extract import ExtractConfig
from components.ingest import IngestConfig
from components.lm.source import ModelConfig, model_config
from components.registry.promote import PromoteConfig
from components.train_head import TrainHeadConfig
from components.train_rl import TrainRLConfig
from components.train_judge import TrainJudgeConfig
from components.train_sft import TrainSFTConfig
from components.validate import ValidateConfig
from flows.settings import section_configs
from tests.conftest import ROOT

STAGE_CONFIGS = section_configs()
"""params.yaml section -> the config built from it by ``stage_config`` (the stage's own name)."""

CONFIGS = [*STAGE_CONFIGS.values(), ModelConfig]


def _build_section(name: str, params: dict):
    """The config params.yaml section ``name`` turns into, built the way its stage builds it."""
    if name in ("model", "runtime"):
        return model_config(params)  # model + runtime -> one ModelConfig
    if name == "train_rl_text":  # an ablation: its keys override train_rl (train_rl.main)
        return stage_config(TrainRLConfig, name, {name: {**params["train_rl"], **params[name]}})
    if name not in STAGE_CONFIGS:
        pytest.fail(f"params.yaml:{name} has no config class: add it to flows/settings.py:section_configs.")
    return stage_config(STAGE_CONFIGS[name], name, params)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_every_params_section_builds_its_config(params):
    """The shipped params.yaml builds a config for every section (catches drift between the two)."""
    assert set(params) >= {"model", "runtime", "train_rl_text", *STAGE_CONFIGS}
    for name in params:
        cfg = _build_section(name, params)
        assert dataclasses.is_dataclass(cfg), name
    ablation = _build_section("train_rl_text", params)
    assert (ablation.w_lat, ablation.w_cons, ablation.w_txt) == (0.0, 0.0, 1.0)
    assert ablation.steps == params["train_rl"]["steps"]


def _section_for(cls, params: dict) -> dict:
    if cls is ModelConfig:
        return {**params["model"], **params["runtime"]}
    return params[next(name for name, c in STAGE_CONFIGS.items() if c is cls)]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_code_defaults_equal_params_yaml(cls, params):
    """A config built in code (tests, notebooks) behaves like the pipeline's."""
    section = _section_for(cls, params)
    for field in dataclasses.fields(cls):
        assert field.name in section, f"{cls.__name__}.{field.name} is missing from params.yaml"
        assert _plain(field.default) == _plain(section[field.name]), (
            f"{cls.__name__}.{field.name}: code default {field.default!r} != params.yaml {section[field.name]!r}")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    missing = []
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.AnnAssign):
            doc = body[i + 1] if i + 1 < len(body) else None
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str) and doc.value.value.strip()):
                missing.append(stmt.target.id)
    assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['max_harmfull'\]"):
        stage_config(IngestConfig, "ingest", {"ingest": {"max_harmfull": 3}})


def test_lists_become_tuples_and_ints_floats():
    cfg = build(IngestConfig, {"sources": ["harmbench"], "val_fraction": 0}, "ingest")
    assert cfg.sources == ("harmbench",) and cfg.val_fraction == 0.0


def test_validation_says_how_to_fix():
    with pytest.raises(ConfigError, match="test is held out"):
        build(CurateConfig, {"splits": ["test"]}, "curate")
    with pytest.raises(ConfigError, match="use one of"):
        build(ModelConfig, {"dtype": "int3"}, "model")
    with pytest.raises(ConfigError, match="'hf' \\(transformers generate\\)"):
        build(ModelConfig, {"engine": "vllm"}, "model")
    with pytest.raises(ConfigError, match=r"curate.top_p=0.0: use a mass in \(0, 1\]"):
        build(CurateConfig, {"top_p": 0.0}, "curate")


@pytest.mark.parametrize("cls, section, key, bad", [
    (TrainRLConfig, {"clip": 1.5}, "train_rl.clip", 1.5),
    (TrainRLConfig, {"lr": 0.0}, "train_rl.lr", 0.0),
    (TrainRLConfig, {"top_p": 0.0}, "train_rl.top_p", 0.0),
    (TrainRLConfig, {"select_from": -1}, "train_rl.select_from", -1),
    (IngestConfig, {"test_fraction": 0.0}, "ingest.test_fraction", 0.0),
    (IngestConfig, {"max_val_benign": -1}, "ingest.max_val_benign", -1),
    (IngestConfig, {"max_val_harmful": 0}, "ingest.max_val_harmful", 0),
    (ExtractConfig, {"batch_size": 16, "shard_rows": 8}, "extract.shard_rows", 8),
    (TrainHeadConfig, {"ema": 1.0}, "train_head.ema", 1.0),
    (EvaluateConfig, {"attacks": ["nope"]}, "evaluate.attacks", "nope"),
    (EvaluateConfig, {"batch_tokens": -1}, "evaluate.batch_tokens", -1),
    (ValidateConfig, {"min_class_fraction": 0.5}, "validate.min_class_fraction", 0.5),
    (PromoteConfig, {"max_over_refusal": 1.5}, "promote.max_over_refusal", 1.5),
], ids=lambda v: v if isinstance(v, str) and "." in v else None)
def test_bad_value_names_key_value_and_fix(cls, section, key, bad):
    with pytest.raises(ConfigError) as err:
        build(cls, section, "params.yaml")
    message = str(err.value)
    assert key in message and repr(bad) in message, message
    assert any(fix in message for fix in ("use ", "choose ", "raise ", "lower ")), message


def test_bad_runtime_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"runtime\.device='tpu': use auto, cpu or cuda"):
        model_config({"model": {}, "runtime": {"device": "tpu"}})


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="expected int"):
        build(IngestConfig, {"max_harmful": "many"}, "ingest")


def test_selection_replies_are_as_long_as_evaluations():
    """train_rl's val replies are graded at evaluation's token budget, so val measures what the
    report measures (a refusal that starts after the rollouts' 32 tokens read as compliance)."""
    params = load_params(ROOT / "params.yaml")
    assert params["train_rl"]["select_max_new_tokens"] == params["evaluate"]["max_new_tokens"]
