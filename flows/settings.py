"""Check the whole params.yaml before a flow starts: one line and exit 2 for any bad value.

Each stage validates its own section when it runs; a typo in ``evaluate`` would otherwise surface
only after every training stage had run (or as a Prefect traceback). The mapping below names the
config class of every section; ``tests/test_config.py`` checks the same sections.
"""
from __future__ import annotations

from pathlib import Path

from components.core.config import ConfigError, load_params, stage_config

SHARED = ("model", "runtime")
"""Sections every stage reads (built together into ModelConfig)."""
ABLATION = "train_rl_text"
"""The ablation section: overrides applied on top of ``train_rl``."""


def section_configs() -> dict[str, type]:
    """params.yaml section → its frozen config class (imported here, not at module import)."""
    from components.curate import CurateConfig
    from components.evaluate import EvaluateConfig
    from components.extract import ExtractConfig
    from components.ingest import IngestConfig
    from components.registry.promote import PromoteConfig
    from components.train_head import TrainHeadConfig
    from components.train_judge import TrainJudgeConfig
    from components.train_rl import TrainRLConfig
    from components.train_router import TrainRouterConfig
    from components.train_sft import TrainSFTConfig
    from components.validate import ValidateConfig

    return {"ingest": IngestConfig, "curate": CurateConfig, "validate": ValidateConfig, "extract": ExtractConfig,
            "train_head": TrainHeadConfig, "train_sft": TrainSFTConfig, "train_rl": TrainRLConfig,
            "train_judge": TrainJudgeConfig, "train_router": TrainRouterConfig, "evaluate": EvaluateConfig, "promote": PromoteConfig}


def check_params(path: str | Path) -> dict:
    """Build every section of ``path`` (and the cross-section rules); returns the params."""
    from components.evaluate import check_judges
    from components.lm.source import check_source, model_config

    try:
        params = load_params(path)
    except ConfigError as exc:  # a YAML parser error spans several lines: keep the one-line contract
        raise ConfigError(" ".join(str(exc).split())) from None
    configs = section_configs()
    known = set(configs) | set(SHARED) | {ABLATION}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; sections are {sorted(known)}.")
    check_source(model_config(params))  # a missing model directory, before any stage runs
    built = {name: stage_config(cls, name, params) for name, cls in configs.items()}
    ablation = {**(params.get("train_rl") or {}), **(params.get(ABLATION) or {})}
    stage_config(configs["train_rl"], ABLATION, {ABLATION: ablation})
    check_judges(built["evaluate"], params)
    return params
