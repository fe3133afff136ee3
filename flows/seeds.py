"""The ``craft-seeds`` Prefect flow: the pipeline under other training seeds, and the spread.

Each seed is one DVC experiment, ``dvc exp run --temp --name seed-<s> -S train_rl.seed=<s> …``: the
pipeline in a temporary copy of the committed workspace, one seed at a time. ``--scope rl`` (the
default) sets only the RL stages' seed, so DVC re-runs ``train_rl``, ``train_rl_text`` and
``evaluate`` and restores every other stage from its cache; ``--scope all`` sets every training
stage's seed (``components.sweep.seed_spread``). The stages log into this workspace's MLflow store as
children of one parent run ``seeds``; each stage run is tagged ``craft.seed=<s>`` and the parent
``craft.seed=<s1>,<s2>,…`` (find one seed's runs with the filter ``tags.`craft.seed` = '1'``). The
experiments stay in the repository afterwards: ``dvc exp show`` lists them, ``dvc exp apply seed-1``
brings one's outputs into the workspace. The committed run (the seeds in ``params.yaml``) is the
column ``HEAD``. Written: ``seeds/spread.md``, ``seeds/spread.json`` (one row per metric), ``seeds/sweep.json``
(baseline commit, scope, seeds and the baseline's dvc.lock hashes, which ``craft promote --seeds``
matches against the challenger; ``paired``: CRAFT against the ablation and base on refusal rate −
over-refusal, paired by prompt across the runs, ``components.sweep.paired``; ``minutes``: each
experiment's wall time), and the table as a Prefect artifact. ``craft seeds --report`` writes them
anew from the experiments already in the repository.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.core import env
from components.sweep import seed_spread
from components.core import tracking
from components.core.config import ConfigError, load_params
from components.core.io import write_text
from components.sweep import paired
from flows import lineage
from flows.pipeline import StageFailed, stage_env, stream, workspace_lock

OUT = "seeds"
TRANSCRIPTS = "data/evaluate/transcripts.parquet"
PAIRED_WITH = ("train_rl_text", "base")
"""The models CRAFT is compared with, paired by prompt within each run (``components.sweep.paired``)."""
PAIRED_ROUTED = (("train_rl_routed", "train_rl_text_routed"), ("train_rl_routed", "base"), ("train_rl_routed", "train_rl"))
"""The same for CRAFT behind the prompt router (evaluate's ``<model>_routed`` rows), when a run has them;
against CRAFT alone also on over-refusal and on refusal rate apart (``ROUTED_RATES``)."""
ROUTED_RATES = (("train_rl_routed", "train_rl", "benign"), ("train_rl_routed", "train_rl", "harmful"))
SEED_TAG = "craft.seed"
RUN_CONTEXT = "MLFLOW_RUN_CONTEXT"
"""JSON tags MLflow adds to every run it creates (its SystemEnvironmentContext); stage processes inherit it."""
ABOUT = {
    "rl": ("`HEAD`: the committed run {} (seeds as in params.yaml). `seed-N`: a DVC experiment from it with the "
           "RL stages' seed (`train_rl`, inherited by `train_rl_text`) set to N; curation, extraction, the head and "
           "SFT are the committed run's, and the base and SFT figures are HEAD's (the same weights and prompts "
           "under greedy decoding give the same answers), so those rows do not vary. The held-out prompts are the same in every run, "
           "so the spread is RL randomness alone. Standard deviation with n − 1; the interval is a 95% t interval of "
           "the mean over runs, clipped to 0–100% for rates."),
    "all": ("`HEAD`: the committed run {} (seeds as in params.yaml). `seed-N`: a DVC experiment from it with "
            "every training stage's seed set to N. The held-out prompts are the same in every run, so the spread is "
            "training randomness alone. Standard deviation with n − 1; the interval is a 95% t interval of the "
            "mean over runs, clipped to 0–100% for rates."),
}


REUSED = {"rl": ("base", "train_sft")}
"""Models a scope leaves as the committed run's. Their evaluation in an experiment would repeat
HEAD's exactly (the same weights and prompts, greedy decoding, each model generated in batches of
its own), so the experiments evaluate only the reseeded models and the spread takes these models'
figures from ``HEAD`` (``with_reused``). Under ``rl`` this saves about 7 of a seed's 34 minutes here.
With ``evaluate.routed_models`` set, an experiment still evaluates ``base``: the routed rows of the
reseeded models take base's answers where the router keeps an input from the adapter
(``evaluate_overrides``); the routed rows of a reused model come from ``HEAD`` too (``reused_models``).
Base is then decoded once per machine: the experiments share this workspace's evaluation cache
(``components.eval.generations``, through ``CRAFT_WORKSPACE``), so the first one on a machine decodes
base and the later ones read its completions back."""


def reused_models(scope: str) -> tuple[str, ...]:
    """The models whose rows and figures an experiment of ``scope`` takes from ``HEAD``: ``REUSED``
    and their routed rows (base has none)."""
    reused = REUSED.get(scope, ())
    return reused + tuple(f"{m}_routed" for m in reused if m != "base")
LABELS = {"train_rl": "CRAFT", "train_rl_text": "RL text-only", "base": "base", "train_sft": "SFT",
          "train_rl_routed": "CRAFT + router", "train_rl_text_routed": "RL text-only + router"}


def evaluate_overrides(root: Path, scope: str) -> list[str]:
    """``-S evaluate.models=[…]`` without the models ``scope`` leaves unchanged (but with ``base`` while
    ``evaluate.routed_models`` is set: the routed rows need its answers), and no latent-guard pass
    (its figures are not in the spread; about 3 minutes a seed here). None for ``all``."""
    from components.evaluate import EvaluateConfig

    reused, path = REUSED.get(scope, ()), root / "params.yaml"
    evaluate = (load_params(path).get("evaluate") or {}) if path.is_file() else {}
    models = list(evaluate.get("models") or [])
    routed = evaluate.get("routed_models", EvaluateConfig.routed_models)
    kept = [m for m in models if m not in reused or (m == "base" and routed)]
    if not kept or len(kept) == len(models):
        return []
    return [f"evaluate.models=[{','.join(kept)}]", "evaluate.guard_models=[]"]


def with_reused(found: dict[str, dict[str, dict]], scope: str) -> dict[str, dict[str, dict]]:
    """Each experiment's metrics with the ``evaluate`` figures of the models ``scope`` did not
    re-evaluate filled in from ``HEAD`` (an experiment's own figures are never overwritten)."""
    head = (found.get("HEAD") or {}).get("evaluate") or {}
    reused = tuple(f"{m}/" for m in reused_models(scope))
    out = {}
    for name, stages in found.items():
        evaluate = dict(stages.get("evaluate") or {})
        if name != "HEAD" and reused:
            evaluate = {**{k: v for k, v in head.items() if k.startswith(reused)}, **evaluate}
        out[name] = {**stages, **({"evaluate": evaluate} if evaluate else {})}
    return out


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=stage_env(None),
                          capture_output=True, text=True, errors="replace")


class UncommittedChanges(ConfigError):
    """The workspace differs from its last commit, which is the sweep's baseline (a user error:
    entry points report it as one line, exit 2)."""


def require_committed(root: Path) -> None:
    """Refuse to sweep a workspace with uncommitted changes to tracked files: the experiments would
    run the changed code and settings while the ``HEAD`` column shows the committed results."""
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{OUT}"], cwd=root,
                             capture_output=True, text=True).stdout.split("\n")
    changed = [line[3:] for line in changed if line.strip()]
    if changed:
        raise UncommittedChanges(f"{len(changed)} tracked file(s) differ from the last commit "
                                 f"({', '.join(changed[:5])}{', …' if len(changed) > 5 else ''}); the committed run "
                                 "is the sweep's baseline: run `craft run`, commit params.yaml, dvc.lock and "
                                 "data/*/metrics.json, then sweep.")


def require_new_seeds(root: Path, cfg: seed_spread.SweepConfig) -> None:
    """Refuse a seed the committed run already used for a reseeded stage: that experiment would
    repeat ``HEAD`` and count twice, shrinking the sd."""
    path = root / "params.yaml"
    params = load_params(path) if path.is_file() else {}
    used = {int((params.get(stage) or {}).get("seed", 0)): stage for stage in seed_spread.SCOPES[cfg.scope]}
    again = sorted(set(cfg.seeds) & set(used))
    if again:
        raise ConfigError(f"--seeds {','.join(map(str, cfg.seeds))}: seed {again[0]} is the committed run's "
                          f"({used[again[0]]}.seed in params.yaml), already the HEAD column; pick other seeds.")


@contextlib.contextmanager
def seed_tagged(seed: int):
    """While inside, every MLflow run a stage process creates is tagged ``craft.seed=<seed>`` (at
    creation, so a stage that fails is tagged too); tags the user put in ``MLFLOW_RUN_CONTEXT`` stay."""
    saved = os.environ.get(RUN_CONTEXT)
    os.environ[RUN_CONTEXT] = json.dumps({**(json.loads(saved) if saved else {}), SEED_TAG: str(seed)})
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RUN_CONTEXT, None)
        else:
            os.environ[RUN_CONTEXT] = saved


@task(name="seed-experiment", task_run_name="seed-{seed}", cache_policy=NO_CACHE)
def run_seed(seed: int, workspace: str, parent_run_id: str, scope: str = "rl") -> None:
    """One pipeline run with the seed of the ``scope``'s stages set to ``seed`` (a DVC experiment)."""
    logger = get_run_logger()
    name = experiment_name(seed, scope)
    _dvc(Path(workspace), "exp", "remove", name)  # a rerun replaces the old experiment of that name
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name]
    for assignment in seed_spread.overrides(seed, scope) + evaluate_overrides(Path(workspace), scope):
        cmd += ["-S", assignment]
    with seed_tagged(seed):
        returncode, tail = stream(cmd, Path(workspace), parent_run_id, name, logger)
    if returncode != 0:
        raise StageFailed(f"experiment {name} failed (exit {returncode}):\n" + "\n".join(tail))


def experiment_name(seed: int, scope: str) -> str:
    """``seed-N`` under the default scope ``rl``, ``seed-<scope>-N`` otherwise: runs of two scopes
    measure different randomness, so one spread never mixes them."""
    return f"seed-{seed}" if scope == "rl" else f"seed-{scope}-{seed}"


def experiment_states(root: Path, baseline: str = "HEAD") -> dict[str, dict]:
    """{run name: its ``dvc exp show`` state (rev, metrics, outs)} for the baseline commit (as
    ``HEAD``) and the ``seed-*`` experiments derived from it."""
    shown = _dvc(root, "exp", "show", "--json", "--rev", baseline)
    if shown.returncode != 0:
        raise RuntimeError(f"dvc exp show failed:\n{shown.stderr[-2000:]}")
    return states_of(json.loads(shown.stdout))


def states_of(shown: list[dict]) -> dict[str, dict]:
    """``experiment_states`` from parsed ``dvc exp show --json``. An experiment DVC still lists as
    running or queued (``executor.state``; a sweep killed mid-run leaves one behind, showing the
    baseline's outputs) or that failed is left out: it has no results of its own."""
    out: dict[str, dict] = {}
    for commit in shown:
        runs = [(commit.get("rev"), commit)] + [(e.get("name"), e["revs"][0]) for e in commit.get("experiments") or []
                                                 if e.get("revs") and not _unfinished(e)]
        for name, rev in runs:
            if name == "workspace" or not (name == commit.get("rev") or re.fullmatch(r"seed-([a-z]+-)?\d+", str(name))):
                continue
            if rev.get("error") and name != commit.get("rev"):
                continue  # a failed experiment: no outputs to report
            out["HEAD" if name == commit.get("rev") else name] = rev
    return out


def _unfinished(experiment: dict) -> bool:
    state = (experiment.get("executor") or {}).get("state")
    if state not in (None, "success"):
        logging.getLogger(__name__).warning("experiment %s is %s: left out of the spread (a killed sweep leaves "
                                            "one behind; `dvc exp show` lists it)", experiment.get("name"), state)
        return True
    return False


def experiment_metrics(root: Path, baseline: str = "HEAD") -> dict[str, dict[str, dict[str, float]]]:
    """{run name: {stage: metrics}} for the baseline commit (as ``HEAD``) and its ``seed-*`` experiments."""
    return {name: metrics_of(state) for name, state in experiment_states(root, baseline).items()}


def metrics_of(state: dict) -> dict[str, dict[str, float]]:
    metrics = (state.get("data") or {}).get("metrics") or {}
    return {Path(path).parent.name: (m.get("data") or {}) for path, m in metrics.items()}


def run_transcripts(root: Path, states: dict[str, dict], names: list[str], scope: str) -> dict[str, pd.DataFrame]:
    """{run name: its evaluation transcripts}, read from the DVC cache at each run's commit; an
    experiment's table gains HEAD's rows of the models ``scope`` did not re-evaluate (``REUSED``)."""
    import dvc.api

    tables = {}
    for name in names:
        with dvc.api.open(TRANSCRIPTS, repo=str(root), rev=states[name]["rev"], mode="rb") as f:
            tables[name] = pd.read_parquet(io.BytesIO(f.read()))
    return paired.fill_from(tables, "HEAD", reused_models(scope))


def paired_section(root: Path, states: dict[str, dict], names: list[str], scope: str) -> tuple[list, str]:
    """CRAFT against the text-only ablation and against base on refusal rate − over-refusal, paired
    by prompt within each run, across the runs: (results, markdown). A run whose transcripts cannot
    be read (its cache was garbage-collected) leaves the test out with the reason, not the sweep."""
    from dvc.exceptions import DvcException

    try:
        tables = run_transcripts(root, states, names, scope)
        tests = [paired.paired_score(tables, "train_rl", other) for other in PAIRED_WITH]
        both = lambda a, b: all((t.model == a).any() and (t.model == b).any() for t in tables.values())  # noqa: E731
        tests += [paired.paired_score(tables, a, b) for a, b in PAIRED_ROUTED if both(a, b)]
        tests += [paired.paired_rate(tables, a, b, kind) for a, b, kind in ROUTED_RATES if both(a, b)]
    except (OSError, ValueError, KeyError, DvcException) as exc:  # the spread is written either way
        logging.getLogger(__name__).warning("paired test across seeds left out: %s", exc)
        return [], f"Paired test across seeds left out: {type(exc).__name__}: {exc}"
    return tests, "\n\n".join(paired.markdown(t, LABELS) for t in tests)


def run_order(found: dict, scope: str = "rl") -> list[str]:
    """HEAD first, then every experiment of the baseline under ``scope`` by seed (earlier sweeps'
    seeds of the same scope count too)."""
    seed_of = {n: int(n.rsplit("-", 1)[1]) for n in found if n != "HEAD"}
    seeds = sorted((n for n, s in seed_of.items() if experiment_name(s, scope) == n), key=seed_of.get)
    return (["HEAD"] if "HEAD" in found else []) + seeds


def sweep_record(root: Path, baseline: str, cfg: seed_spread.SweepConfig, runs: list[str]) -> dict:
    """``seeds/sweep.json``: what the spread was measured on. ``lock`` holds the baseline's dvc.lock
    output hashes (``dvc.<stage>.<path>``, the registry's ``lineage.dvc.*`` tags), so a gate can tell
    whether a registered version is the committed run of this sweep."""
    return {"baseline": baseline, "scope": cfg.scope, "stages": list(seed_spread.SCOPES[cfg.scope]),
            "seeds": list(cfg.seeds), "runs": runs, "lock": lineage.lock_hashes(root)}


def run_minutes(root: Path, baseline: str, scope: str, runs: list[str], new: dict[str, float]) -> dict[str, float]:
    """Wall minutes of each experiment in ``runs``: this sweep's (``new``), else what an earlier
    ``seeds/sweep.json`` of the same baseline and scope recorded."""
    path = root / OUT / "sweep.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = old.get("baseline") == baseline and old.get("scope") == scope
    merged = {**(old.get("minutes") or {} if same else {}), **new}
    return {n: merged[n] for n in runs if n in merged}


def report(root: Path, baseline: str, cfg: seed_spread.SweepConfig, states: dict[str, dict] | None = None,
           minutes: dict[str, float] | None = None) -> tuple[list[dict], str]:
    """Write ``seeds/`` from the experiments of ``baseline`` in the repository (this sweep's and
    earlier ones' of the same scope; ``minutes``: this sweep's wall time per experiment): (spread
    rows, the table as markdown)."""
    states = experiment_states(root, baseline) if states is None else states
    found = with_reused({n: metrics_of(st) for n, st in states.items()}, cfg.scope)
    runs = {n: seed_spread.headline(found[n]) for n in run_order(found, cfg.scope)}
    rows = seed_spread.spread(runs)
    table = seed_spread.markdown(rows, list(runs))
    tests, text = paired_section(root, states, list(runs), cfg.scope)
    about = ABOUT[cfg.scope].format(baseline)
    took = run_minutes(root, baseline, cfg.scope, list(runs), minutes or {})
    timing = ("\n\nWall time per experiment here: " + ", ".join(f"{n} {m:.1f} min" for n, m in took.items()) + "."
              if took else "")
    write_text(root / OUT / "spread.md", f"# Seed spread ({len(runs)} runs, scope `{cfg.scope}`)\n\n{about}\n\n"
                                         f"{table}\n\n{text}{timing}\n")
    write_text(root / OUT / "spread.json", json.dumps(rows, indent=2))
    record = {**sweep_record(root, baseline, cfg, list(runs)), "paired": [t.to_dict() for t in tests],
              "minutes": took}
    write_text(root / OUT / "sweep.json", json.dumps(record, indent=2))
    return rows, table


def rewrite_report(workspace: str = ".", scope: str = "rl", baseline: str | None = None) -> str:
    """``craft seeds --report``: ``seeds/`` anew from experiments already in the repository, running
    none (after an interrupted sweep, or to add what a newer version reports); the spread table as
    markdown. The experiments are those of ``baseline`` (a git revision), by default of the last
    commit, or of the sweep ``seeds/sweep.json`` records when the last commit has none and changed no
    output since (docs or comments committed after the sweep: ``report_baseline``). Like a sweep it
    needs that run's outputs in the workspace (``sweep.json`` records its dvc.lock hashes)."""
    root = env.configure(workspace)
    require_committed(root)
    baseline, states = report_baseline(root, scope, baseline)
    names = run_order({n: {} for n in states}, scope)
    seeds = tuple(int(n.rsplit("-", 1)[1]) for n in names if n != "HEAD")
    with workspace_lock(root):
        return report(root, baseline, seed_spread.SweepConfig(seeds, scope), states)[1]


def report_baseline(root: Path, scope: str, rev: str | None = None) -> tuple[str, dict[str, dict]]:
    """(the commit whose ``scope`` experiments the report reads, their ``experiment_states``).

    ``rev`` given: that commit. Else the last commit when it has experiments of ``scope``, else the
    baseline ``seeds/sweep.json`` records. Any baseline other than the last commit must have the
    workspace's cached dvc.lock outputs (the same run; reports and metrics, ``cache: false``, may
    differ in their timings), or its experiments would be reported beside another run's figures."""
    def seeds_of(states: dict) -> list[str]:
        return [n for n in run_order({n: {} for n in states}, scope) if n != "HEAD"]

    head = lineage.head_commit(root)
    if rev is None:
        states = experiment_states(root, head)
        recorded = _recorded_baseline(root, scope)
        if seeds_of(states) or recorded in (None, head):
            return _with_seeds(head, states, seeds_of(states), scope)
        rev = recorded
    commit = _commit(root, rev)
    if commit != head:
        here, there = lineage.lock_hashes(root), lineage.lock_hashes_at(root, commit)
        timed = lineage.uncached_outs(root)
        differ = sorted(k for k in here.keys() | there.keys() if here.get(k) != there.get(k) and k not in timed)
        if differ:
            raise ConfigError(f"the workspace's outputs are not those of commit {commit[:12]} ({len(differ)} dvc.lock "
                              f"output(s) differ, e.g. {differ[0]}): its experiments belong to another run; "
                              f"`git checkout {commit[:12]}` (and `dvc checkout`) to report them there.")
    states = experiment_states(root, commit)
    return _with_seeds(commit, states, seeds_of(states), scope)


def _with_seeds(commit: str, states: dict, seeds: list[str], scope: str) -> tuple[str, dict[str, dict]]:
    if not seeds:
        raise ConfigError(f"no {experiment_name(0, scope).rsplit('-', 1)[0]}-N experiments of commit {commit[:12]} "
                          f"in this repository (`dvc exp show`); run `craft seeds --seeds 1,2 --scope {scope}` first.")
    return commit, states


def _recorded_baseline(root: Path, scope: str) -> str | None:
    """The baseline commit of ``seeds/sweep.json`` when it recorded a sweep of ``scope``."""
    path = root / OUT / "sweep.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record.get("baseline") if record.get("scope") == scope else None


def _commit(root: Path, rev: str) -> str:
    """``rev`` as a full commit id; a ConfigError naming it when git does not know it."""
    shown = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                           capture_output=True, text=True)
    if shown.returncode != 0:
        raise ConfigError(f"--baseline {rev!r}: not a commit of this repository (`git log` lists them).")
    return shown.stdout.strip()


@flow(name="craft-seeds", log_prints=True)
def seed_sweep(seeds: list[int], workspace: str = ".", scope: str = "rl") -> list[dict]:
    """Run the pipeline once per seed (DVC experiments) and write the spread of the headline figures."""
    cfg = seed_spread.SweepConfig(tuple(seeds), scope)
    root = env.configure(workspace)
    require_committed(root)
    require_new_seeds(root, cfg)
    tracking.ensure_store()
    tags = {"craft.stage": "seeds", SEED_TAG: ",".join(map(str, cfg.seeds)), "craft.seed_scope": cfg.scope}
    with workspace_lock(root), mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="seeds",
                                                tags=tags) as run:
        baseline = lineage.head_commit(root)  # the experiments' parent, even if HEAD moves meanwhile
        mlflow.log_params({"seeds": ",".join(map(str, cfg.seeds)), "baseline": baseline, "scope": cfg.scope})
        minutes = {}
        for seed in cfg.seeds:
            start = time.monotonic()
            run_seed(seed, str(root), run.info.run_id, cfg.scope)
            minutes[experiment_name(seed, cfg.scope)] = round((time.monotonic() - start) / 60, 2)
        mlflow.log_metrics({f"minutes/{n}": m for n, m in minutes.items()})
        rows, table = report(root, baseline, cfg, minutes=minutes)
        mlflow.log_artifacts(str(root / OUT), OUT)
        create_markdown_artifact(key="seed-spread", markdown=table, description=f"MLflow run {run.info.run_id}")
    return rows
