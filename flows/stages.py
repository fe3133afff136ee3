"""The pipeline's stages, in order. Adding a stage = a dvc.yaml entry + one line here.

``report`` names the markdown file a stage writes for humans (shown as a Prefect artifact).
"""
from __future__ import annotations

from dataclasses import dataclass

from components.core.config import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    report: str = "summary.md"
    """The stage's markdown report under data/<stage>/ ("" when it writes none)."""


PIPELINE: tuple[Stage, ...] = (
    Stage("sources", report=""),
    Stage("ingest"),
    Stage("curate"),
    Stage("validate", report="report.md"),
    Stage("extract"),
    Stage("train_head"),
    Stage("train_sft"),
    Stage("train_judge", report="report.md"),  # before RL: its checkpoint selection uses the held-out judge
    Stage("train_router"),
    Stage("train_rl_text"),
    Stage("train_rl"),
    Stage("evaluate", report="report.md"),
)

NAMES = tuple(s.name for s in PIPELINE)


def select(names: list[str] | None) -> list[Stage]:
    """The stages to run, in pipeline order; unknown names are an error that lists valid ones."""
    if not names:
        return list(PIPELINE)
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(NAMES)}.")
    if "ingest" in names:  # ingest's dep (the source-file hashes) must be fresh whenever ingest may run
        names = [*names, "sources"]
    return [s for s in PIPELINE if s.name in names]
