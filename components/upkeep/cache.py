"""The caches under ``.cache`` that no stage removes: listed, and pruned by age.

``components/train_rl.py`` keeps two kinds of entry outside DVC's outputs (DVC clears those
before a stage re-runs), one folder per key:

- ``.cache/checkpoints/train_rl/<key>/``: a run's resumable checkpoints (``step-NNNNNN``, the last
  two) and its best adapter so far (``best``); ``train_rl.checkpoint_dir``. The CRAFT stage and
  its text-only ablation both write here (their keys differ by the reward weights), so one
  pipeline run adds two entries.
- ``.cache/gates/train_rl/<key>/``: the adapter RL starts from, shared by the two RL stages;
  ``train_rl.gate_dir``.

``components/evaluate.py`` keeps a third, ``.cache/evaluations/evaluate/<key>/``: one model's
completions on evaluation's inputs (``components.eval.generations``), so a model that did not
change is not decoded again. One pipeline run adds an entry per model it evaluated.

A key hashes every setting, the model, numerics, prompts, code and library versions, so every
run whose inputs changed (a scheduled retraining on new data, a seed sweep, an upgrade) adds
entries that later runs with other inputs never read. ``.cache/models/<name>/`` (a base model
converted once) is listed but never pruned: rebuilding it is slow and there is one per model.

Pruning keeps, per kind and stage folder, the ``keep`` entries written last, and of the others
removes those last written more than ``older_than_days`` ago. "Written" is the newest modification
time of any file in the entry: a run in progress writes a checkpoint every ``checkpoint_every``
steps. A start adapter that later runs only read keeps the time it was computed (reads leave no
trace). An entry that cannot be read whole is never pruned. An unfinished write's temporary
folder (``.<key>.*.partial``, a killed gate save) takes no ``keep`` slot and goes once old. An
entry is renamed to ``<key>.pruning`` before it is deleted, so a kill mid-delete never leaves half
an entry that a run would resume from (runs look a key up by its exact name); the next prune
finishes the job.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.core.config import require

PRUNED = ("checkpoints", "gates", "evaluations")  # <kind>/<stage>/<key>/
KEPT = ("models",)                  # <kind>/<name>/
PRUNING = ".pruning"
DAY = 86400.0


@dataclass(frozen=True)
class PruneConfig:
    """What ``craft cache --prune`` removes."""

    older_than_days: float = 30.0
    """Entries last written longer ago than this are removed (unless among the ``keep`` newest)."""
    keep: int = 2
    """The newest finished entries of each kind and stage folder that stay whatever their age; >= 0
    (2: one pipeline run's CRAFT and ablation checkpoints share the folder ``train_rl``)."""

    def __post_init__(self) -> None:
        require(isinstance(self.older_than_days, (int, float)) and self.older_than_days >= 0,
                f"--older-than {self.older_than_days!r}: give a number of days >= 0 (e.g. 30).")
        require(isinstance(self.keep, int) and not isinstance(self.keep, bool) and self.keep >= 0,
                f"--keep {self.keep!r}: give a whole number >= 0 of newest entries to keep per stage folder.")


@dataclass(frozen=True)
class Entry:
    kind: str                 # checkpoints | gates | evaluations | models
    stage: str                # the stage folder ('' for models)
    key: str
    path: Path
    size: int                 # bytes of every file below path
    written: float            # newest mtime of any file below path (seconds since the epoch)
    last_step: int | None     # checkpoints: newest complete step; else None
    unreadable: str = ""      # why part of the entry could not be read ('' when all was): never pruned
    temporary: bool = False   # an unfinished write's folder (.<key>.*.partial)

    @property
    def prunable(self) -> bool:
        return self.kind in PRUNED and not self.unreadable


def _walk(folder: Path) -> tuple[list[os.stat_result], str]:
    """Every file's stat below ``folder`` (symlinks not followed), and the first error met, if any."""
    stats, errors = [], []
    for dirpath, _dirs, names in os.walk(folder, onerror=errors.append):
        for name in names:
            try:
                stats.append(os.stat(os.path.join(dirpath, name), follow_symlinks=False))
            except FileNotFoundError:  # a run replaced it meanwhile
                continue
            except OSError as exc:
                errors.append(exc)
    return stats, (f"{errors[0].strerror or errors[0]}: {errors[0].filename}" if errors else "")


def _last_step(folder: Path) -> int | None:
    """The newest checkpoint with its ``done`` marker (``components/rl/checkpoint.py`` layout)."""
    steps = [int(p.name[5:]) for p in folder.glob("step-??????") if (p / "done").exists() and p.name[5:].isdigit()]
    return max(steps) if steps else None


def _entry(kind: str, stage: str, folder: Path) -> Entry:
    try:
        if folder.is_symlink():  # moved elsewhere by hand: the user's to manage
            return Entry(kind, stage, folder.name, folder, 0, folder.lstat().st_mtime, None, "a symbolic link")
        stats, error = _walk(folder)
        written = max((s.st_mtime for s in stats), default=folder.stat().st_mtime)
        step = _last_step(folder) if kind == "checkpoints" else None
    except OSError as exc:
        return Entry(kind, stage, folder.name, folder, 0, 0.0, None, f"{exc.strerror or exc}: {folder}")
    return Entry(kind, stage, folder.name, folder, sum(s.st_size for s in stats), written, step, error,
                 folder.name.startswith(".") and folder.name.endswith(".partial"))


def _folders(base: Path) -> list[Path]:
    """Sub-folders of ``base`` (symlinks to folders included), a killed prune's leftovers aside."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.endswith(PRUNING))


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
    """The entries ``cfg`` removes at time ``now``: per (kind, stage), all but the ``keep`` newest
    finished entries, of those last written more than ``older_than_days`` before ``now``."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.kind, e.stage), []).append(e)
    cutoff = now - cfg.older_than_days * DAY
    out = []
    for group in groups.values():
        finished = sorted((e for e in group if not e.temporary), key=lambda e: e.written, reverse=True)
        older = finished[cfg.keep:] + [e for e in group if e.temporary]
        out += [e for e in older if e.prunable and e.written < cutoff]
    return sorted(out, key=lambda e: (e.kind, e.stage, e.written))


def leftovers(cache: Path) -> list[Path]:
    """Entries a prune renamed but has not deleted (killed, or a file it could not remove)."""
    return sorted(p for kind in PRUNED for stage in _folders(cache / kind) for p in stage.glob(f"*{PRUNING}"))


@dataclass(frozen=True)
class Removed:
    freed: int                # bytes of the entries deleted whole
    failed: list[str]         # "<path>: <why>" for each that could not be deleted whole


def _delete(path: Path) -> str:
    """Delete ``path`` (a folder, or a symlink to one: only the link); '' or why it failed."""
    errors: list[str] = []
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, onerror=lambda _f, p, info: errors.append(f"{p}: {getattr(info[1], 'strerror', info[1])}"))
    return errors[0] if errors else ""


def remove(entries: list[Entry], cache: Path) -> Removed:
    """Delete ``entries`` and earlier prunes' leftovers under ``cache``."""
    freed, failed, tried = 0, [], set()
    for e in entries:
        doomed = e.path.with_name(e.path.name + PRUNING)
        tried.add(doomed)
        try:
            if doomed.exists() or doomed.is_symlink():
                _delete(doomed)  # an earlier prune's leftover of the same key
            os.replace(e.path, doomed)  # atomic: from here no run can find the key
        except FileNotFoundError:  # removed meanwhile
            continue
        except OSError as exc:
            failed.append(f"{e.path}: {exc.strerror or exc}")
            continue
        error = _delete(doomed)
        if error:
            failed.append(error)
        else:
            freed += e.size
    for doomed in set(leftovers(cache)) - tried:
        if error := _delete(doomed):
            failed.append(error)
    return Removed(freed, failed)


def human(size: float) -> str:
    """Bytes in binary units: 17.3 MiB."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def _age(seconds: float) -> str:
    hours = max(seconds, 0.0) / 3600
    return f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} d ago"


def _verdict(e: Entry, marked: set[Path]) -> str:
    if e.path in marked:
        return "yes"
    if e.kind not in PRUNED:
        return "never"
    return f"no ({e.unreadable})" if e.unreadable else ("no (unfinished write)" if e.temporary else "no")


def table(entries: list[Entry], doomed: list[Entry], now: float, stuck: list[Path] = ()) -> str:
    """A plain-text listing: one line an entry, the ones a prune would remove marked; ``stuck``:
    earlier prunes' leftovers."""
    marked = {e.path for e in doomed}
    lines = [f"{'kind':<12}{'stage':<15}{'key':<26}{'size':>10}{'written':>12}  {'last step':<10}prune"]
    for e in entries:
        step = "" if e.last_step is None else str(e.last_step)
        lines.append(f"{e.kind:<12}{e.stage or '-':<15}{e.key[:25]:<26}{human(e.size):>10}"
                     f"{_age(now - e.written):>12}  {step:<10}{_verdict(e, marked)}")
    total, freed = sum(e.size for e in entries), sum(e.size for e in doomed)
    lines.append(f"{len(entries)} entries, {human(total)}; a prune removes {len(doomed)} ({human(freed)}).")
    lines += [f"left by an earlier prune, deleted by the next: {p}" for p in stuck]
    return "\n".join(lines)
