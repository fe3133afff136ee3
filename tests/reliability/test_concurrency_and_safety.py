"""Concurrency (workspace lock, concurrent promotions) and safe-loading rules."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def test_second_pipeline_run_in_a_workspace_is_refused(tmp_path):
    from flows.pipeline import WorkspaceBusy, workspace_lock

    with workspace_lock(tmp_path):
        with pytest.raises(WorkspaceBusy, match="another `craft run` is using"):
            with workspace_lock(tmp_path):
                pass
    with workspace_lock(tmp_path):  # released after the first run ends
        pass


def test_concurrent_promotions_serialise(tmp_path, monkeypatch):
    import mlflow

    from components.registry import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    c = promote.client()
    c.create_registered_model("race")
    with mlflow.start_run():
        mlflow.log_text("x", "model/x.txt")
        uri = f"runs:/{mlflow.active_run().info.run_id}/model"
    v = c.create_model_version("race", uri, mlflow.active_run().info.run_id if mlflow.active_run() else None)
    tags = {"response_asr": 0.1, "response_asr_n": 100, "over_refusal": 0.1, "over_refusal_n": 100,
            "degenerate_rate": 0.0, "degenerate_rate_n": 200, "utility_nll": 1.0}
    for k, val in tags.items():
        c.set_model_version_tag("race", v.version, f"eval.{k}", str(val))
        c.set_model_version_tag("race", v.version, f"eval.base.{k}", str(0.5 if k == "response_asr" else val))
    c.set_registered_model_alias("race", "challenger", v.version)
    results, errors = [], []

    def go():
        try:
            results.append(promote.promote(promote.PromoteConfig(model_name="race")))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    mlflow.set_tracking_uri(None)
    assert not errors, errors
    assert sorted(r["promoted"] for r in results) == [False, True]  # exactly one did the move


def test_no_unsafe_deserialisation_in_code():
    offenders = []
    for path in list((ROOT / "components").rglob("*.py")) + list((ROOT / "flows").rglob("*.py")):
        text = path.read_text()
        if re.search(r"pickle\.loads?\(", text) or re.search(r"torch\.load\((?![^)]*weights_only=True)", text):
            offenders.append(path.name)
    assert not offenders


def test_remote_code_is_off_by_default_and_secrets_are_redacted():
    from components.lm.source import ModelConfig
    from components.core.tracking import flatten

    assert ModelConfig().trust_remote_code is False
    flat = flatten({"hub": {"token": "hf_abc", "api_key": "k"}, "lr": 0.1})
    assert flat == {"hub.token": "***", "hub.api_key": "***", "lr": "0.1"}


def test_local_prefect_server_binds_loopback(monkeypatch):
    from flows import schedule

    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, **kw):
        seen["cmd"] = cmd
        raise Stop

    monkeypatch.setattr(schedule.subprocess, "Popen", fake_popen)
    with pytest.raises(Stop):
        schedule.start_local_server(port=4999)
    assert seen["cmd"][seen["cmd"].index("--host") + 1] == "127.0.0.1"
