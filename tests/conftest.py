"""Shared fixtures: a tiny random-weight model, an offline environment, small workspaces."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.core import env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    """Offline defaults, and a throwaway MLflow store so tests never touch ./mlruns."""
    store = tmp_path_factory.mktemp("mlruns")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect"))
    os.environ["CRAFT_EVAL_CACHE"] = "off"  # stages decode every time and never write ./.cache (tests/test_eval_generations.py passes its own)
    env.configure(ROOT)
    # Prefect binds its console log handler to the sys.stderr of its first import: import it here,
    # before any test, not inside a test whose captured stderr is closed afterwards.
    from prefect import flow  # noqa: F401 - loads prefect.main, which sets up its logging
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from components.lm import tiny_model

    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from components.lm import runtime
    from components.lm import source as model_source

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    return runtime.load(model_source.resolve(cfg), cfg)


def make_workspace(path: Path, params_text: str) -> Path:
    """A git + DVC workspace with the project's dvc.yaml and the given params.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "components", path / "components",
                    ignore=shutil.ignore_patterns("__pycache__"))  # dvc deps are hashed here
    (path / "params.yaml").write_text(params_text)
    from tests.factories import gold_frame

    (path / "data" / "gold").mkdir(parents=True, exist_ok=True)  # train_judge's input: a tiny gold set
    gold = gold_frame()
    gold.to_json(path / "data" / "gold" / "labels.jsonl", orient="records", lines=True)
    gold.head(6).assign(label_first=gold.label, label_second=gold.label)[["id", "label_first", "label_second"]].to_json(
        path / "data" / "gold" / "second_labels.jsonl", orient="records", lines=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "-q"], cwd=path, check=True)
    subprocess.run(dvc + ["config", "core.analytics", "false"], cwd=path, check=True)
    return path
