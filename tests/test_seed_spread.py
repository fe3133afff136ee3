import math

import pytest
import yaml

from components.sweep import seed_spread
from components.core.config import ConfigError
from tests.conftest import ROOT


def test_overrides_set_every_training_seed_and_keep_the_split():
    """Scope ``all``: every seeded stage in params.yaml is varied except ingest (the held-out split
    stays fixed). Scope ``rl`` (the default): only train_rl, whose seed train_rl_text inherits."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seeded = {name for name, section in params.items() if isinstance(section, dict) and "seed" in section}
    assert set(seed_spread.SEEDED) == seeded - {"ingest"}
    assert seed_spread.overrides(3, "all") == [f"++{s}.seed=3" for s in seed_spread.SEEDED]
    assert seed_spread.overrides(3) == ["++train_rl.seed=3"]
    assert "seed" not in params["train_rl_text"]  # the ablation inherits the RL seed


def test_rl_scope_reruns_only_the_rl_stages_and_evaluation():
    """The stages whose params hold a reseeded ``<stage>.seed`` under ``rl`` (the whole section, or
    the key itself): train_rl and its ablation (it reads the whole train_rl section), nothing
    upstream; evaluate (it reads train_rl.judge, not the seed) re-runs through its adapter deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    reseeded = {f"{s}.seed" for s in seed_spread.SCOPES["rl"]} | set(seed_spread.SCOPES["rl"])
    touched = {name for name, body in stages.items()
               if reseeded & {p if isinstance(p, str) else next(iter(p)) for p in body.get("params") or []}}
    assert touched == {"train_rl", "train_rl_text"}
    assert {"data/train_rl/adapter", "data/train_rl_text/adapter"} <= {
        d if isinstance(d, str) else next(iter(d)) for d in stages["evaluate"]["deps"]}


def test_headline_has_the_refusal_and_over_refusal_rows_of_every_model():
    labels = [label for _, _, label in seed_spread.HEADLINE]
    for model in ("CRAFT", "RL text-only", "SFT"):
        assert f"{model} refusal rate" in labels and f"{model} over-refusal" in labels
    assert len(labels) == len(set(labels))


def test_experiments_of_two_scopes_are_never_mixed():
    from flows.seeds import experiment_name, run_order

    found = {"HEAD": {}, "seed-2": {}, "seed-all-1": {}, "seed-1": {}, "seed-all-3": {}}
    assert experiment_name(2, "rl") == "seed-2" and experiment_name(2, "all") == "seed-all-2"
    assert run_order(found) == ["HEAD", "seed-1", "seed-2"]
    assert run_order(found, "all") == ["HEAD", "seed-all-1", "seed-all-3"]


def test_an_experiment_dvc_still_lists_as_running_is_left_out():
    """A sweep killed mid-seed leaves DVC listing that experiment as running, with the baseline's
    outputs: counting it would add a copy of HEAD to the spread (seen in round 17)."""
    from flows.seeds import states_of

    def exp(name, state=None):
        return {"name": name, "revs": [{"rev": f"r-{name}", "error": None}],
                "executor": None if state is None else {"state": state, "name": "tempdir"}}

    shown = [{"rev": "workspace"}, {"rev": "abc", "experiments": [
        exp("seed-1"), exp("seed-2", "success"), exp("seed-3", "running"), exp("seed-4", "queued"),
        exp("seed-5", "failed")]}]
    assert sorted(states_of(shown)) == ["HEAD", "seed-1", "seed-2"]


def test_spread_is_mean_sample_sd_and_range():
    runs = {"HEAD": {"CRAFT response ASR": 0.5}, "seed-1": {"CRAFT response ASR": 0.25},
            "seed-2": {"CRAFT response ASR": 0.75}}
    row = next(r for r in seed_spread.spread(runs) if r["metric"] == "CRAFT response ASR")
    assert (row["n"], row["mean"], row["min"], row["max"]) == (3, 0.5, 0.25, 0.75)
    assert row["sd"] == pytest.approx(0.25)  # sqrt((0.0625 + 0.0625) / 2)
    assert row["seed-1"] == 0.25


def test_a_rates_interval_stays_within_0_and_1_and_other_figures_are_not_clipped():
    """Three seeds far apart: the t interval of the mean leaves [0, 1]; a rate's is clipped there."""
    runs = {"HEAD": {"CRAFT refusal rate": 0.1, "CRAFT utility NLL": -1.0},
            "seed-1": {"CRAFT refusal rate": 0.9, "CRAFT utility NLL": 1.0},
            "seed-2": {"CRAFT refusal rate": 0.5, "CRAFT utility NLL": 0.0}}
    rows = {r["metric"]: r for r in seed_spread.spread(runs)}
    assert (rows["CRAFT refusal rate"]["ci_lo"], rows["CRAFT refusal rate"]["ci_hi"]) == (0.0, 1.0)
    assert rows["CRAFT utility NLL"]["ci_lo"] < -1.0 and rows["CRAFT utility NLL"]["ci_hi"] > 1.0


def test_missing_metrics_are_left_out_not_zero():
    runs = {"HEAD": seed_spread.headline({"evaluate": {"train_rl/response_asr": 0.4}}), "seed-1": {}}
    rows = {r["metric"]: r for r in seed_spread.spread(runs)}
    assert rows["CRAFT response ASR"]["n"] == 1 and rows["CRAFT response ASR"]["sd"] == 0.0
    assert rows["head AUROC"]["n"] == 0 and math.isnan(rows["head AUROC"]["mean"])


def test_markdown_formats_rates_as_percent_and_auroc_as_decimal():
    runs = {"HEAD": seed_spread.headline({"evaluate": {"train_rl/response_asr": 0.4583},
                                          "train_head": {"head/auroc": 0.9634}})}
    text = seed_spread.markdown(seed_spread.spread(runs), ["HEAD"])
    assert "| CRAFT response ASR | 45.8% | 45.8% ± 0.0% | —–— | 45.8%–45.8% |" in text  # one run: no CI
    assert "| head AUROC | 0.963 |" in text
    assert "| SFT over-refusal | — |" in text


@pytest.mark.parametrize("text, message", [("1,x", "comma-separated integers"), ("1,1", "repeats"),
                                           ("", "at least one"), ("-1", ">= 0")])
def test_bad_seed_lists_say_how_to_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        seed_spread.SweepConfig(seed_spread.parse_seeds(text))


def test_an_unknown_scope_says_which_exist():
    with pytest.raises(ConfigError, match="use one of rl, all"):
        seed_spread.SweepConfig((1,), "curate")


def test_cli_refuses_a_bad_seed_list_before_running_anything(capsys):
    from flows.cli import main

    assert main(["seeds", "--seeds", "2,2"]) == 2
    assert "repeats a seed" in capsys.readouterr().err


def test_experiment_metrics_reads_head_and_seed_experiments(monkeypatch, tmp_path):
    """The shape ``dvc exp show --json`` prints (dvc 3.x ExpState.dumpd): workspace, then the
    baseline commit with its experiments; only HEAD and ``seed-*`` runs are kept."""
    import json
    import subprocess

    from flows import seeds

    def state(rev, name, asr):
        return {"rev": rev, "name": name, "error": None, "experiments": None,
                "data": {"rev": rev, "metrics": {"data/evaluate/metrics.json": {"data": {"train_rl/response_asr": asr}}}}}

    shown = [state("workspace", None, 0.9),
             {**state("abc123", "main", 0.5), "experiments": [
                 {"name": "seed-1", "executor": None, "revs": [state("def456", "seed-1", 0.25)]},
                 {"name": "lr-try", "executor": None, "revs": [state("0ff1ce", "lr-try", 0.1)]},
                 {"name": "seed-x", "executor": None, "revs": [state("0ff1cf", "seed-x", 0.1)]}]}]
    monkeypatch.setattr(seeds, "_dvc", lambda root, *a, **k: subprocess.CompletedProcess(a, 0, json.dumps(shown), ""))
    found = seeds.experiment_metrics(tmp_path)
    assert found == {"HEAD": {"evaluate": {"train_rl/response_asr": 0.5}},
                     "seed-1": {"evaluate": {"train_rl/response_asr": 0.25}}}
    assert seeds.run_order({"seed-10": {}, "seed-2": {}, "HEAD": {}}) == ["HEAD", "seed-2", "seed-10"]


def test_sweep_refuses_uncommitted_changes(tmp_path):
    """The HEAD column must be what the experiments were run against."""
    import subprocess

    from flows.seeds import UncommittedChanges, require_committed

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("train_rl: {lr: 0.1}\n")
    (tmp_path / "scratch.txt").write_text("untracked files do not count\n")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "spread.md").write_text("the last sweep's report\n")
    git("add", "params.yaml", "seeds")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "seeds" / "spread.md").write_text("a newer report does not count either\n")
    require_committed(tmp_path)
    (tmp_path / "params.yaml").write_text("train_rl: {lr: 0.2}\n")
    with pytest.raises(UncommittedChanges, match=r"params\.yaml.*commit"):
        require_committed(tmp_path)


def test_rl_scope_evaluates_only_the_reseeded_models_and_reuses_head_for_the_rest(tmp_path):
    """Under ``rl`` base and SFT are the committed run's weights: the experiments skip their
    evaluation, and the spread takes their figures from HEAD, never over an experiment's own."""
    from flows.seeds import evaluate_overrides, with_reused

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"evaluate": {"models": ["base", "train_sft", "train_rl_text", "train_rl"], "routed_models": []}}))
    assert evaluate_overrides(tmp_path, "rl") == ["evaluate.models=[train_rl_text,train_rl]", "evaluate.guard_models=[]"]
    assert evaluate_overrides(tmp_path, "all") == []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(  # routed rows (the default) need base's answers
        {"evaluate": {"models": ["base", "train_sft", "train_rl_text", "train_rl"]}}))
    assert evaluate_overrides(tmp_path, "rl") == ["evaluate.models=[base,train_rl_text,train_rl]",
                                                  "evaluate.guard_models=[]"]
    found = {"HEAD": {"evaluate": {"base/response_asr": 0.7, "train_sft/over_refusal": 0.05,
                                   "train_sft_routed/over_refusal": 0.04, "train_rl/response_asr": 0.3}},
             "seed-1": {"evaluate": {"train_rl/response_asr": 0.2}, "train_rl": {"selected_step": 9}}}
    filled = with_reused(found, "rl")
    assert filled["seed-1"]["evaluate"] == {"base/response_asr": 0.7, "train_sft/over_refusal": 0.05,
                                            "train_sft_routed/over_refusal": 0.04, "train_rl/response_asr": 0.2}
    assert filled["seed-1"]["train_rl"] == {"selected_step": 9} and filled["HEAD"] == found["HEAD"]
    assert with_reused(found, "all")["seed-1"]["evaluate"] == {"train_rl/response_asr": 0.2}


def test_the_committed_seed_is_refused_it_is_the_head_column(tmp_path):
    from flows.seeds import require_new_seeds

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train_rl": {"seed": 0}, "curate": {"seed": 5}}))
    with pytest.raises(ConfigError, match=r"seed 0 is the committed run's \(train_rl\.seed"):
        require_new_seeds(tmp_path, seed_spread.SweepConfig((0, 1)))
    require_new_seeds(tmp_path, seed_spread.SweepConfig((1, 5)))  # curate.seed 5 is not reseeded under rl
    with pytest.raises(ConfigError, match="curate.seed"):
        require_new_seeds(tmp_path, seed_spread.SweepConfig((1, 5), "all"))


def test_transcripts_of_an_rl_experiment_gain_heads_rows_of_the_models_it_did_not_evaluate(monkeypatch, tmp_path):
    """Each run's transcripts come from the DVC cache at its own commit; under scope rl base is
    HEAD's, so the CRAFT-vs-base test pairs each seed's CRAFT with the one base."""
    import contextlib
    import io

    import dvc.api
    import pandas as pd

    from flows import seeds

    def table(models, refused):
        return pd.DataFrame([{"model": m, "attack": "none", "prompt_id": f"p{i}", "prompt_kind": k,
                              "label_response": "refusal" if r else "compliance"}
                             for m in models for i, (k, r) in enumerate(zip(["harmful", "benign"], refused))])

    stored = {"c0": table(["base", "train_sft", "train_rl_text", "train_rl"], [1, 0]),
              "c1": table(["train_rl_text", "train_rl"], [0, 1])}
    opened = []

    @contextlib.contextmanager
    def fake_open(path, repo, rev, mode):
        opened.append((path, rev))
        buf = io.BytesIO()
        stored[rev].to_parquet(buf)
        yield io.BytesIO(buf.getvalue())

    monkeypatch.setattr(dvc.api, "open", fake_open)
    states = {"HEAD": {"rev": "c0", "data": {"rev": "c0"}}, "seed-1": {"rev": "c1", "data": {"rev": "c1"}}}
    tables = seeds.run_transcripts(tmp_path, states, ["HEAD", "seed-1"], "rl")
    assert opened == [(seeds.TRANSCRIPTS, "c0"), (seeds.TRANSCRIPTS, "c1")]
    assert sorted(set(tables["seed-1"].model)) == ["base", "train_rl", "train_rl_text", "train_sft"]
    tests, text = seeds.paired_section(tmp_path, states, ["HEAD", "seed-1"], "rl")
    assert [t.b for t in tests] == ["train_rl_text", "base"] and "CRAFT vs RL text-only" in text
    assert tests[1].per_run["seed-1"] == -2.0  # seed-1 CRAFT: harmful answered, benign refused; base: the reverse


def test_unreadable_transcripts_leave_the_paired_test_out_with_the_reason(monkeypatch, tmp_path):
    import dvc.api

    from flows import seeds

    def gone(*a, **k):
        raise FileNotFoundError("data/evaluate/transcripts.parquet is not in the cache")

    monkeypatch.setattr(dvc.api, "open", gone)
    tests, text = seeds.paired_section(tmp_path, {"HEAD": {"rev": "c0"}}, ["HEAD"], "rl")
    assert tests == [] and "left out" in text and "not in the cache" in text


def test_report_without_experiments_says_to_run_a_sweep_first(monkeypatch, tmp_path):
    from components.core.config import ConfigError
    from flows import seeds

    monkeypatch.setattr(seeds.lineage, "head_commit", lambda root: "abcdef1234567890")
    monkeypatch.setattr(seeds, "require_committed", lambda root: None)
    monkeypatch.setattr(seeds, "experiment_states", lambda root, baseline: {"HEAD": {}, "seed-all-1": {}})
    with pytest.raises(ConfigError, match=r"no seed-N experiments of commit abcdef123456.*craft seeds --seeds 1,2"):
        seeds.rewrite_report(str(tmp_path), "rl")


def _repo_with_sweep(tmp_path, later_lock=None):
    """A git repo: commit A (dvc.lock, seeds/sweep.json naming A), then commit B (a doc, or
    ``later_lock`` as dvc.lock). Returns (A, B)."""
    import json
    import subprocess

    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    lock = "stages:\n  train_rl:\n    outs:\n    - path: data/train_rl/adapter\n      md5: aaa.dir\n"
    git("init", "-q")
    (tmp_path / "dvc.lock").write_text(lock)
    git("add", "dvc.lock")
    git("commit", "-qm", "run")
    a = git("rev-parse", "HEAD")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "sweep.json").write_text(json.dumps({"baseline": a, "scope": "rl"}))
    (tmp_path / "README.md").write_text("the sweep's figures\n")
    if later_lock is not None:
        (tmp_path / "dvc.lock").write_text(later_lock)
    git("add", "-A")
    git("commit", "-qm", "docs")
    return a, git("rev-parse", "HEAD")


def _states_of(commit):
    return lambda root, baseline: {"HEAD": {}, "seed-1": {}} if baseline == commit else {"HEAD": {}}


def test_report_reads_the_recorded_sweep_after_commits_that_changed_no_output(monkeypatch, tmp_path):
    """`craft seeds --report` after a docs commit: the last commit has no experiments, the sweep's
    baseline has, and the workspace holds that run's outputs, so the report reads the baseline's."""
    from flows import seeds

    a, b = _repo_with_sweep(tmp_path)
    monkeypatch.setattr(seeds, "experiment_states", _states_of(a))
    assert seeds.report_baseline(tmp_path, "rl") == (a, {"HEAD": {}, "seed-1": {}})
    assert seeds.report_baseline(tmp_path, "rl", a[:8])[0] == a  # --baseline: a short id will do
    with pytest.raises(ConfigError, match=r"no seed-N experiments of commit " + b[:12]):
        seeds.report_baseline(tmp_path, "rl", "HEAD")  # --baseline HEAD: the last commit's, which has none
    with pytest.raises(ConfigError, match=r"--baseline 'nope': not a commit"):
        seeds.report_baseline(tmp_path, "rl", "nope")


def test_report_refuses_a_baseline_whose_outputs_the_workspace_does_not_hold(monkeypatch, tmp_path):
    """A later run rewrote an output: the recorded sweep's experiments are another run's."""
    from flows import seeds

    other = "stages:\n  train_rl:\n    outs:\n    - path: data/train_rl/adapter\n      md5: bbb.dir\n"
    a, _ = _repo_with_sweep(tmp_path, later_lock=other)
    monkeypatch.setattr(seeds, "experiment_states", _states_of(a))
    with pytest.raises(ConfigError, match=r"outputs are not those of commit .*dvc.train_rl.data/train_rl/adapter"
                                          r".*git checkout " + a[:12]):
        seeds.report_baseline(tmp_path, "rl")


def test_report_reads_the_recorded_sweep_when_only_timings_in_uncached_outputs_moved(monkeypatch, tmp_path):
    """A re-run of the same inputs rewrites the reports and metrics (``cache: false``) with new
    timings but reproduces every cached output: still the sweep's run. A cached output that moved
    is refused (the test above)."""
    from flows import lineage, seeds

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train_rl:\n    outs:\n    - data/train_rl/adapter\n    metrics:\n"
        "    - data/train_rl/metrics.json:\n        cache: false\n")
    adapter = "    - path: data/train_rl/adapter\n      md5: aaa.dir\n"
    later = f"stages:\n  train_rl:\n    outs:\n{adapter}    - path: data/train_rl/metrics.json\n      md5: ccc\n"
    a, _ = _repo_with_sweep(tmp_path, later_lock=later)
    monkeypatch.setattr(seeds, "experiment_states", _states_of(a))
    assert seeds.report_baseline(tmp_path, "rl")[0] == a
    assert lineage.uncached_outs(tmp_path) == {"dvc.train_rl.data/train_rl/metrics.json"}


def test_baseline_without_report_is_refused(capsys):
    from flows.cli import main

    assert main(["seeds", "--baseline", "HEAD~1", "--seeds", "3"]) == 2
    assert "add --report" in capsys.readouterr().err


def test_report_and_seeds_together_are_refused(capsys):
    from flows.cli import main

    assert main(["seeds", "--report", "--seeds", "3"]) == 2
    assert "drop --seeds" in capsys.readouterr().err


def test_wall_times_are_this_sweeps_or_an_earlier_sweeps_of_the_same_baseline_and_scope(tmp_path):
    import json

    from flows import seeds

    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "sweep.json").write_text(json.dumps(
        {"baseline": "abc", "scope": "rl", "minutes": {"seed-1": 27.5, "seed-9": 30.0}}))
    assert seeds.run_minutes(tmp_path, "abc", "rl", ["HEAD", "seed-1", "seed-2"], {"seed-2": 28.0}) == {
        "seed-1": 27.5, "seed-2": 28.0}
    assert seeds.run_minutes(tmp_path, "other", "rl", ["HEAD", "seed-1"], {}) == {}  # another commit's sweep
    assert seeds.run_minutes(tmp_path, "abc", "all", ["HEAD", "seed-1"], {}) == {}


def test_rates_are_known_by_their_metric_key():
    """Shares print as percentages and have clipped intervals; AUROCs, NLLs and the gap do not, whatever
    their labels say."""
    from components.sweep.seed_spread import HEADLINE, is_rate

    labels = {key: label for _, key, label in HEADLINE}
    assert is_rate(labels["train_rl/over_refusal"]) and is_rate(labels["train_rl/response_asr"])
    assert is_rate(labels["probe_refusal_rate_end"])
    assert not any(is_rate(labels[k]) for k in ("head/auroc", "train_rl/utility_nll", "obfuscation_gap_end"))
    assert not is_rate("a new refusal margin")  # not a HEADLINE rate


def test_over_refusal_per_benign_source_gets_a_row_where_a_run_has_it():
    """evaluate's ``<model>/over_refusal_<source>`` keys become rows (rates, in model then source
    order); their ``_lo``/``_hi``/``_n`` companions, the overall rate and SFT's do not."""
    evaluate = {"train_rl/over_refusal": 0.1, "train_rl/over_refusal_lo": 0.05, "train_rl/over_refusal_n": 120,
                "train_rl/over_refusal_aplomb": 0.25, "train_rl/over_refusal_aplomb_hi": 0.5,
                "train_rl/over_refusal_aplomb_n": 16, "train_rl/over_refusal_benign_lookalikes": 0.08,
                "base/over_refusal_aplomb": 0.0, "train_rl_text/over_refusal_aplomb": 0.5,
                "train_sft/over_refusal_aplomb": 0.1}
    old = seed_spread.headline({"evaluate": {"train_rl/over_refusal": 0.12}})  # a run from before the keys
    runs = {"HEAD": seed_spread.headline({"evaluate": evaluate}), "seed-1": old}
    labels = seed_spread.row_labels(runs)
    extra = labels[len(seed_spread.HEADLINE):]
    assert extra == ["base over-refusal (aplomb)", "RL text-only over-refusal (aplomb)",
                     "CRAFT over-refusal (aplomb)", "CRAFT over-refusal (benign_lookalikes)"]
    rows = {r["metric"]: r for r in seed_spread.spread(runs)}
    assert rows["CRAFT over-refusal (aplomb)"]["n"] == 1 and rows["CRAFT over-refusal (aplomb)"]["mean"] == 0.25
    assert rows["CRAFT over-refusal"]["n"] == 2  # the overall row, as before
    text = seed_spread.markdown(seed_spread.spread(runs), list(runs))
    assert "| CRAFT over-refusal (aplomb) | 25.0% | — |" in text
    assert seed_spread.is_rate("CRAFT over-refusal (benign_lookalikes)")
    assert not seed_spread.is_rate("CRAFT utility NLL")
