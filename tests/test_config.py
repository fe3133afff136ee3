import pytest

from components.core.config import ConfigError, build, stage_config
from components.curate import CurateConfig
from components.ingest import IngestConfig
from components.lm.source import ModelConfig


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


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="expected int"):
        build(IngestConfig, {"max_harmful": "many"}, "ingest")


def test_params_file_sections_are_all_valid():
    """The shipped params.yaml builds every stage config (catches drift between the two)."""
    from components.core.config import load_params
    from components.validate import ValidateConfig
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    for cls, name in ((ModelConfig, "model"), (IngestConfig, "ingest"), (CurateConfig, "curate"),
                      (ValidateConfig, "validate")):
        stage_config(cls, name, params)
