"""`craft cache`: the RL checkpoints and start adapters kept under .cache, listed and pruned by age
(components/upkeep/cache.py). The layout it reads is the one train_rl writes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from components.core.config import ConfigError
from components.upkeep import cache
from flows import cli

DAY = 86400.0
NOW = 1_800_000_000.0


def _entry(root: Path, kind: str, stage: str, key: str, age_days: float, step: int | None = None) -> Path:
    """A fake entry whose every file was last written ``age_days`` before NOW."""
    folder = root / kind / stage / key if stage else root / kind / key
    files = [folder / "best" / "adapter.safetensors"] if kind == "checkpoints" else [folder / "adapter.safetensors"]
    if step is not None:
        files += [folder / f"step-{step:06d}" / "state.pt", folder / f"step-{step:06d}" / "done"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
        os.utime(f, (NOW - age_days * DAY, NOW - age_days * DAY))
    return folder


@pytest.fixture
def store(tmp_path):
    root = tmp_path / ".cache"
    _entry(root, "checkpoints", "train_rl", "old1", 90, step=24)
    _entry(root, "checkpoints", "train_rl", "old2", 45, step=24)
    _entry(root, "checkpoints", "train_rl", "new", 2, step=11)
    _entry(root, "checkpoints", "other", "lone", 400)          # the only entry of its stage: kept by keep=1
    _entry(root, "gates", "train_rl", "g_old", 60)
    _entry(root, "gates", "train_rl", "g_new", 1)
    _entry(root, "models", "", "smollm2-abc", 900)              # never pruned
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return root


def test_scan_reads_kind_stage_size_and_last_step(store):
    found = {(e.kind, e.stage, e.key): e for e in cache.scan(store)}
    assert len(found) == 7
    new = found["checkpoints", "train_rl", "new"]
    assert new.last_step == 11 and new.size == 300 and new.written == pytest.approx(NOW - 2 * DAY)
    assert found["gates", "train_rl", "g_old"].last_step is None
    assert not found["models", "", "smollm2-abc"].prunable


def test_prune_keeps_the_newest_per_stage_and_removes_only_old_ones(store):
    doomed = {e.key for e in cache.to_prune(cache.scan(store), cache.PruneConfig(30, 1), NOW)}
    assert doomed == {"old1", "old2", "g_old"}
    doomed = {e.key for e in cache.to_prune(cache.scan(store), cache.PruneConfig(50, 1), NOW)}
    assert doomed == {"old1", "g_old"}
    doomed = {e.key for e in cache.to_prune(cache.scan(store), cache.PruneConfig(0, 0), NOW)}
    assert doomed == {"old1", "old2", "new", "lone", "g_old", "g_new"}  # every one but the model
    doomed = {e.key for e in cache.to_prune(cache.scan(store), cache.PruneConfig(30, 3), NOW)}
    assert doomed == set()


def test_an_unfinished_write_takes_no_keep_slot_and_goes_once_old(store):
    """A killed gate save leaves .<key>.XXXX.partial: it neither shields nor displaces a real entry."""
    _entry(store, "gates", "train_rl", ".g_new.abc123.partial", 40)
    _entry(store, "gates", "train_rl", ".g_x.def456.partial", 1)
    entries = cache.scan(store)
    assert {e.key for e in entries if e.temporary} == {".g_new.abc123.partial", ".g_x.def456.partial"}
    doomed = {e.key for e in cache.to_prune(entries, cache.PruneConfig(30, 1), NOW) if e.kind == "gates"}
    assert doomed == {"g_old", ".g_new.abc123.partial"}


def test_an_entry_not_read_whole_is_never_pruned(store, monkeypatch):
    """A folder it cannot list, a file it cannot stat, or a symlinked key: shown, never removed."""
    real_stat = os.stat
    hidden = store / "checkpoints" / "train_rl" / "old1" / "best"

    def stat(path, *a, **k):
        if str(path).startswith(str(hidden)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    elsewhere = store.parent / "moved"
    elsewhere.mkdir()
    (store / "checkpoints" / "train_rl" / "linked").symlink_to(elsewhere)
    os.utime(elsewhere, (NOW - 99 * DAY,) * 2)
    entries = {e.key: e for e in cache.scan(store)}
    assert "Permission denied" in entries["old1"].unreadable and entries["linked"].unreadable == "a symbolic link"
    doomed = {e.key for e in cache.to_prune(list(entries.values()), cache.PruneConfig(0, 0), NOW)}
    assert "old1" not in doomed and "linked" not in doomed and "old2" in doomed


def test_a_failed_delete_is_reported_not_counted(store, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "rmtree", lambda path, onerror: onerror(os.rmdir, str(path), (
        PermissionError, PermissionError(13, "Permission denied"), None)))
    doomed = cache.to_prune(cache.scan(store), cache.PruneConfig(30, 1), NOW)
    done = cache.remove(doomed, store)
    assert done.freed == 0 and len(done.failed) == len(doomed) == 3 and "Permission denied" in done.failed[0]
    assert len(cache.leftovers(store)) == 3  # renamed away: no run resumes them; the next prune retries


def test_remove_deletes_whole_entries_and_a_killed_prunes_leftovers(store):
    leftover = store / "checkpoints" / "train_rl" / ("dead" + cache.PRUNING)
    (leftover / "best").mkdir(parents=True)
    assert "dead" not in {e.key for e in cache.scan(store)}  # a half-deleted entry is never listed
    doomed = cache.to_prune(cache.scan(store), cache.PruneConfig(30, 1), NOW)
    done = cache.remove(doomed, store)
    assert done.freed == sum(e.size for e in doomed) == 700 and done.failed == []
    left = {e.key for e in cache.scan(store)}
    assert left == {"new", "lone", "g_new", "smollm2-abc"}
    assert not leftover.exists() and not list(store.rglob(f"*{cache.PRUNING}"))


@pytest.mark.parametrize("bad", [dict(older_than_days=-1), dict(keep=-1), dict(keep=True), dict(keep=1.5),
                                 dict(older_than_days="30"), dict(older_than_days=float("nan"))])
def test_bad_settings_say_how_to_fix(bad):
    with pytest.raises(ConfigError, match="--older-than|--keep"):
        cache.PruneConfig(**bad)


def test_the_layout_is_the_one_train_rl_writes(tmp_path):
    """A real checkpoint and a start-adapter folder where train_rl keys them are found, with their step."""
    from components import train_rl
    from components.lm.source import ModelConfig
    from components.rl import checkpoint

    head = tmp_path / "head"
    head.mkdir()
    (head / "w").write_text("h")
    cfg, model_cfg = train_rl.TrainRLConfig(), ModelConfig(dtype="float32", device="cpu")
    ckpt = train_rl.checkpoint_dir(tmp_path, cfg, model_cfg, "fp", head)
    model = torch.nn.Linear(2, 2)
    checkpoint.save(ckpt, 7, model, torch.optim.SGD(model.parameters(), lr=0.1))
    gate = train_rl.gate_dir(tmp_path / ".cache" / "gates", cfg, model_cfg, "fp", {"harmful": ["a"], "benign": ["b"]})
    gate.mkdir(parents=True)
    (gate / "gate.json").write_text("{}")
    found = {(e.kind, e.key): e for e in cache.scan(tmp_path / ".cache")}
    assert found["checkpoints", ckpt.name].last_step == 7 and found["checkpoints", ckpt.name].stage == "train_rl"
    assert ("gates", gate.name) in found


# --- the command ---------------------------------------------------------------------------------

def _age_all(root: Path, days: float) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            os.utime(f, (time.time() - days * DAY,) * 2)


def test_craft_cache_lists_without_removing_then_prunes(store, capsys):
    ws = store.parent
    _age_all(store / "checkpoints" / "train_rl" / "old1", 90)  # times relative to now, not NOW
    _age_all(store / "checkpoints" / "train_rl" / "old2", 80)
    _age_all(store / "checkpoints" / "train_rl" / "new", 0)
    assert cli.main(["cache", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "old1" in out and "add --prune" in out and (store / "checkpoints" / "train_rl" / "old1").exists()
    assert cli.main(["cache", "--prune", "--workspace", str(ws), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pruned = {e["key"] for e in doc["entries"] if e["prune"]}
    assert doc["pruned"] and pruned == {"old1"} and doc["freed_bytes"] == 300 and doc["failed"] == []
    assert not (store / "checkpoints" / "train_rl" / "old1").exists()  # keep 2: old2 stays beside new
    assert (store / "checkpoints" / "train_rl" / "new").exists() and (store / "models" / "smollm2-abc").exists()


def test_craft_cache_prune_is_refused_while_a_run_holds_the_workspace(store, capsys):
    from filelock import FileLock

    ws = store.parent
    before = sorted(p.name for p in store.rglob("*"))
    with FileLock(str(ws / ".craft-run.lock")):
        code = cli.main(["cache", "--prune", "--older-than", "0", "--keep", "0", "--workspace", str(ws)])
    err = capsys.readouterr().err
    assert code == 2 and "another `craft run`" in err
    assert sorted(p.name for p in store.rglob("*")) == before


@pytest.mark.parametrize("argv, names", [(["--keep", "-2"], "--keep"), (["--prune"], "no dvc.yaml")])
def test_craft_cache_bad_value_or_workspace_is_one_line(argv, names, tmp_path, capsys):
    """A mistyped --workspace is an error, not "removed 0 entries"; nothing is created there."""
    ws = tmp_path / "typo"
    assert cli.main(["cache", *argv, "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0] and not ws.exists()
