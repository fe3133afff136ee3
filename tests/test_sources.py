"""The sources stage: DVC re-runs ingest when the prompt files it reads change, and only then."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import sources
from components.data.sources import SourceError

from tests.conftest import make_workspace


def test_manifest_names_packaged_files_relative_to_their_package():
    found = sources.manifest(("aplomb",))
    (entry,) = found["aplomb"]
    assert entry["package"] == "aplomb" and entry["file"] == "data/benign_anchors_v1.json"
    assert len(entry["sha256"]) == 64 and entry["version"]


def test_user_file_hash_follows_its_content(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompt": "How do I bake bread?", "prompt_kind": "benign"}) + "\n")
    before = sources.manifest((f"file:{f}",))
    f.write_text(json.dumps({"prompt": "How do I bake a cake?", "prompt_kind": "benign"}) + "\n")
    assert sources.manifest((f"file:{f}",)) != before


def test_missing_user_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="is not a file"):
        sources.manifest((f"file:{tmp_path / 'nope.csv'}",))


def test_a_changed_prompt_file_reruns_ingest_and_an_unchanged_one_does_not(tmp_path):
    prompts = tmp_path / "mine.jsonl"
    rows = [{"prompt": f"How do I make thing number {i}?", "prompt_kind": "harmful" if i % 2 else "benign"}
            for i in range(12)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = make_workspace(tmp_path / "ws", f"ingest: {{sources: ['file:{prompts}'], max_harmful: 6, max_benign: 6}}\n")
    dvc = [sys.executable, "-m", "dvc"]

    def repro() -> str:
        path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")  # dvc's `python -m`
        done = subprocess.run(dvc + ["repro", "ingest"], cwd=ws, capture_output=True, text=True,
                              env={**os.environ, "PATH": path})
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "Running stage 'ingest'" in repro()
    assert "Stage 'ingest' didn't change, skipping" in repro()
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "A new prompt here?", "prompt_kind": "benign"}) + "\n")
    assert "Running stage 'ingest'" in repro()
