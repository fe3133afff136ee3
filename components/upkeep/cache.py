"""The caches under ``.cache`` that no stage removes: listed, and pruned by age.

``components/train_rl.py`` keeps two kinds of entry outside DVC's outputs (DVC clears those
before a stage re-runs), one folder per key:

- ``.cache/checkpoints/<stage>/<key>/``: a run's resumable checkpoints (``step-NNNNNN``, the last
  two) and its best adapter so far (``best``); ``train_rl.checkpoint_dir``.
- ``.cache/gates/<stage>/<key>/``: the adapter RL starts from, shared by the CRAFT stage and its
  text-only ablation; ``train_rl.gate_dir``.

A key hashes every setting, the model, numerics, prompts, code and library versions, so every
run whose inputs changed (a scheduled retraining on new data, a seed sweep, an upgrade) adds an
entry that later runs with other inputs never read. ``.cache/models/<name>/`` (a base model
converted once) is listed but never pruned: rebuilding it is slow and there is one per model.

Pruning keeps, per kind and stage, the ``keep`` entries written last, and of the others removes
those last written more than ``older_than_days`` ago. "Written" is the newest modification time
of any file in the entry: a run in progress writes a checkpoint every ``checkpoint_every`` steps.
A gate entry that later runs only read keeps the time it was computed (reads leave no trace).
An entry is renamed to ``<key>.pruning`` before it is deleted, so a kill mid-delete never leaves
half an entry that a run would resume from (runs look a key up by its exact name); the next
prune finishes the job.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.core.config import require

PRUNED = ("checkpoints", "gates")  # <kind>/<stage>/<key>/
KEPT = ("models",)                  # <kind>/<name>/
PRUNING = ".pruning"
DAY = 86400.0


@dataclass(frozen=True)
class PruneConfig:
    """What ``craft cache --prune`` removes."""

    older_than_days: float = 30.0
    """Entries last written longer ago than this are removed (unless among the ``keep`` newest)."""
    keep: int = 1
    """The newest entries of each kind and stage that stay whatever their age; >= 0."""

    def __post_init__(self) -> None:
        require(isinstance(self.older_than_days, (int, float)) and self.older_than_days >= 0,
                f"--older-than {self.older_than_days!r}: give a number of days >= 0 (e.g. 30).")
        require(isinstance(self.keep, int) and not isinstance(self.keep, bool) and self.keep >= 0,
                f"--keep {self.keep!r}: give a whole number >= 0 of newest entries to keep per stage.")


@dataclass(frozen=True)
class Entry:
    kind: str                 # checkpoints | gates | models
    stage: str                # the RL stage folder ('' for models)
    key: str
    path: Path
    size: int                 # bytes of every file below path
    written: float            # newest mtime of any file below path (seconds since the epoch)
    last_step: int | None     # checkpoints: newest complete step; else None

    @property
    def prunable(self) -> bool:
        return self.kind in PRUNED


def _files(folder: Path) -> list[os.stat_result]:
    stats = []
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            try:
                stats.append(os.stat(os.path.join(dirpath, name)))
            except FileNotFoundError:  # a run replaced it meanwhile
                continue
    return stats


def _last_step(folder: Path) -> int | None:
    """The newest checkpoint with its ``done`` marker (``components/rl/checkpoint.py`` layout)."""
    steps = [int(p.name[5:]) for p in folder.glob("step-??????") if (p / "done").exists() and p.name[5:].isdigit()]
    return max(steps) if steps else None


def _entry(kind: str, stage: str, folder: Path) -> Entry:
    stats = _files(folder)
    written = max((s.st_mtime for s in stats), default=folder.stat().st_mtime)
    return Entry(kind, stage, folder.name, folder, sum(s.st_size for s in stats), written,
                 _last_step(folder) if kind == "checkpoints" else None)


def _folders(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.endswith(PRUNING)) if base.is_dir() else []


def scan(cache: Path) -> list[Entry]:
    """Every entry under ``cache`` (a workspace's ``.cache``), by kind, stage and key."""
    found = []
    for kind in PRUNED:
        for stage in _folders(cache / kind):
            found += [_entry(kind, stage.name, key) for key in _folders(stage)]
    for kind in KEPT:
        found += [_entry(kind, "", name) for name in _folders(cache / kind)]
    return found


def to_prune(entries: list[Entry], cfg: PruneConfig, now: float) -> list[Entry]:
    """The entries ``cfg`` removes at time ``now``: per (kind, stage), all but the ``keep`` newest,
    of those last written more than ``older_than_days`` before ``now``."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if e.prunable:
            groups.setdefault((e.kind, e.stage), []).append(e)
    cutoff = now - cfg.older_than_days * DAY
    out = []
    for group in groups.values():
        older = sorted(group, key=lambda e: e.written, reverse=True)[cfg.keep:]
        out += [e for e in older if e.written < cutoff]
    return sorted(out, key=lambda e: (e.kind, e.stage, e.written))


def leftovers(cache: Path) -> list[Path]:
    """Entries a killed prune renamed but did not finish deleting."""
    return sorted(p for kind in PRUNED if (cache / kind).is_dir()
                  for stage in (cache / kind).iterdir() if stage.is_dir()
                  for p in stage.glob(f"*{PRUNING}"))


def remove(entries: list[Entry], cache: Path) -> int:
    """Delete ``entries`` (and a killed prune's leftovers under ``cache``); returns the bytes freed."""
    freed = 0
    for e in entries:
        doomed = e.path.with_name(e.path.name + PRUNING)
        shutil.rmtree(doomed, ignore_errors=True)  # a killed prune's leftover of the same key
        try:
            os.replace(e.path, doomed)  # atomic: from here no run can find the key
        except FileNotFoundError:  # removed meanwhile
            continue
        freed += e.size
    for doomed in leftovers(cache):
        shutil.rmtree(doomed, ignore_errors=True)
    return freed


def human(size: float) -> str:
    """Bytes in binary units: 17.3 MB."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def _age(seconds: float) -> str:
    hours = max(seconds, 0.0) / 3600
    return f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} d ago"


def table(entries: list[Entry], doomed: list[Entry], now: float) -> str:
    """A plain-text listing: one line an entry, the ones a prune would remove marked."""
    marked = {e.path for e in doomed}
    lines = [f"{'kind':<12}{'stage':<15}{'key':<26}{'size':>10}{'written':>12}  {'last step':<10}prune"]
    for e in entries:
        age = _age(now - e.written)
        step = "" if e.last_step is None else str(e.last_step)
        lines.append(f"{e.kind:<12}{e.stage or '-':<15}{e.key[:25]:<26}{human(e.size):>10}{age:>12}  {step:<10}"
                     f"{'yes' if e.path in marked else ('never' if not e.prunable else 'no')}")
    total, freed = sum(e.size for e in entries), sum(e.size for e in doomed)
    lines.append(f"{len(entries)} entries, {human(total)}; a prune removes {len(doomed)} ({human(freed)}).")
    return "\n".join(lines)
