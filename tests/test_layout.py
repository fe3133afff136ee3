"""The architecture holds: layering contract, and every stage's dvc.yaml deps cover the code it runs.

The closure test is what keeps DVC honest: a stage whose deps miss a file it imports would be
skipped by ``dvc repro`` after that file changed. The import graph comes from grimp, independent
of ``components.core.code`` (which the RL checkpoint key hashes), and the two are compared.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

from components.core import code

ROOT = Path(__file__).resolve().parents[1]


def stage_modules(dvc: dict) -> dict[str, str]:
    """stage name -> the module its cmd runs (``python -m components.X``)."""
    out = {}
    for name, stage in dvc["stages"].items():
        m = re.search(r"python -m (components\.\w+)", stage["cmd"])
        assert m, f"{name}: cmd does not run a components module"
        out[name] = m.group(1)
    return out


def uncovered(dvc: dict, graph) -> dict[str, list[str]]:
    """stage -> files of its module's import closure that no dep (file or folder) covers."""
    missing = {}
    for name, module in stage_modules(dvc).items():
        modules = {module} | {m for m in graph.find_upstream_modules(module) if m.startswith("components.")}
        files = {code.module_file(m) for m in modules}
        # importing a.b.c also runs a/__init__.py and a/b/__init__.py
        files |= {p for m in modules for parent in code._with_parents(m) if (p := code.module_file(parent))}
        deps = [str(d) for d in dvc["stages"][name].get("deps", [])]
        rel = sorted(f.relative_to(ROOT).as_posix() for f in files if f is not None)
        gaps = [f for f in rel if f != "components/__init__.py"
                and not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
        if gaps:
            missing[name] = gaps
    return missing


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("components")


@pytest.fixture(scope="module")
def dvc():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_dep_list_covers_its_import_closure(dvc, graph):
    assert uncovered(dvc, graph) == {}


def test_the_closure_check_fails_when_a_dep_is_removed(dvc, graph):
    for stage, dep in (("train_rl", "components/eval"), ("evaluate", "components/head"), ("extract", "components/lm")):
        broken = yaml.safe_load(yaml.safe_dump(dvc))
        broken["stages"][stage]["deps"].remove(dep)
        gaps = uncovered(broken, graph)
        assert stage in gaps and all(f.startswith(dep + "/") for f in gaps[stage]), gaps


def test_checkpoint_key_closure_matches_the_import_graph(graph):
    """components.core.code (hashed into the RL checkpoint key) finds what grimp finds."""
    ours = {p.relative_to(ROOT).as_posix() for p in code.import_closure("components.train_rl")}
    theirs = {code.module_file(m).relative_to(ROOT).as_posix()
              for m in graph.find_upstream_modules("components.train_rl") | {"components.train_rl"}}
    assert theirs <= ours
    assert "components/eval/judges.py" in ours and "components/registry/serving.py" not in ours


def test_layering_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), "import-linter is a dev dependency: run `make install`"
    done = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_layering_contract_catches_an_upward_import(tmp_path):
    """The contract can fail: a core module importing the RL package breaks it."""
    for item in ("components", "flows", "pyproject.toml"):
        src = ROOT / item
        (shutil.copytree(src, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, tmp_path / item))
    bad = tmp_path / "components" / "core" / "io.py"
    bad.write_text(bad.read_text() + "\nfrom components.rl import formulas  # noqa\n")
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "components.core.io -> components.rl.formulas" in done.stdout, done.stdout[-2000:]


def test_components_never_import_frameworks():
    pattern = re.compile(r"^\s*(import|from)\s+(prefect|dvc|flows)\b", re.M)
    offenders = [p for p in (ROOT / "components").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
