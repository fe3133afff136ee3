"""Stage ``evaluate``: three-way verdicts on held-out prompts, with intervals and paired tests.

Held-out ``test`` prompts only (never curated, never used in RL; tests/test_heldout_split.py).
For each model under test: greedy, batched generation for the plain harmful prompts, for the
first ``attack_prompts`` of them wrapped by each jailbreak (template k mod ``attack_templates``),
and for the benign look-alikes; ``<think>…</think>`` is split from the answer and both are judged.

The judge is the held-out evaluation judge (``heldout``: fitted on the gold set by
``train_judge``), never the judge ``train_rl`` rewards with (config validation refuses that
unless ``allow_reward_judge``). Verdicts are refusal | compliance | degenerate; metrics count
them (``components.eval.metrics``): response/reasoning ASR (compliance share on plain harmful),
refusal rate, over-refusal (refusal share on benign), degenerate rate, per-attack ASR, each with
a Wilson 95% interval, plus utility NLL. ``compare/train_rl_vs_<model>/<metric>_p`` are exact
McNemar p-values on the same inputs. ``eval_set.json`` records the prompt set's digest, which the
promotion gate compares across registered versions. A model decoded before on the same inputs, the
same way, is not decoded again: its completions are read from the workspace's evaluation cache and
judged anew (``components.eval.generations``; ``CRAFT_EVAL_CACHE=off`` turns it off). The MLflow
run also records the inputs as its ``evaluation`` dataset (digest: that same digest) and every
transcript as the table ``transcripts.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.core import datasets, stage_cli, tracking
from components.core.config import require, stage_config
from components.core.io import dir_digest, read_table, write_json, write_table
from components.data.records import PROMPT_COLUMNS, stable_id
from components.eval import attacks as attack_lib
from components.eval import generations
from components.eval import metrics as eval_metrics
from components.eval import report as eval_report
from components.eval import routing
from components.eval import transcripts as tx
from components.eval.judges import HELDOUT, JUDGES, Judge, make_judge, valid_judge
from components.eval.judges import identity as judge_identity
from components.lm import source as model_source
from components.lm.runtime import LoadedModel
from components.lm.under_test import load_under_test

log = logging.getLogger("craft.evaluate")
STAGE = "evaluate"
LABELS = {"base": "base", "train_sft": "SFT on safe traces", "train_rl_text": "RL, text reward only",
          "train_rl": "CRAFT", "train_rl_guard": "CRAFT + latent guard",
          "train_sft_routed": "SFT + router", "train_rl_text_routed": "RL, text reward only + router",
          "train_rl_routed": "CRAFT + router"}
FOCUS = "train_rl"
"""The model every other one is compared with (paired tests)."""
TABLE_CHARS = 2000
"""Longest text cell of the MLflow transcripts table (transcripts.parquet keeps every character)."""
INPUT_COLUMNS = (*PROMPT_COLUMNS, "attack", "template", "input")
"""Columns of one evaluated input (the rest of a transcript row is the model's output and verdicts)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml:evaluate."""

    models: tuple[str, ...] = ("base", "train_sft", "train_rl_text", "train_rl")
    """``base`` and pipeline output folders under data/ (or any paths); missing ones are skipped."""
    max_harmful: int = 160
    """Harmful test prompts evaluated plain (the first N of the test split by prompt id); >= 1."""
    max_benign: int = 120
    """Benign test look-alikes evaluated for over-refusal; >= 0."""
    attacks: tuple[str, ...] = ("dan", "inthewild", "past_tense", "future_tense", "autodan", "tap", "gcg")
    """Jailbreak wrappers applied to harmful prompts (components/eval/attacks.py)."""
    attack_templates: int = 3
    """Templates per attack; prompt k gets template k mod this; >= 1."""
    attack_prompts: int = 40
    """Harmful prompts wrapped by every attack (the first N of the plain ones); >= 0."""
    max_new_tokens: int = 48
    """Token budget of each evaluated response; >= 1."""
    batch_size: int = 256
    """Most prompts generated together in one batch; >= 1 (on a CPU 64 decodes about twice as fast
    as 16; bf16 greedy answers can differ in a few tokens between batchings)."""
    batch_tokens: int = 12288
    """Most tokens in one batch, rows × (longest prompt + ``max_new_tokens``); 0 = no limit (every
    batch ``batch_size`` rows). Long jailbreak prompts then decode in smaller batches and short ones
    in up to ``batch_size`` rows (benchmarks/bench_eval_batches.py); >= 0."""
    judge: str = HELDOUT
    """The evaluation judge: ``heldout`` (fitted on the gold set), or keyword | embedding | ensemble | evidence | hf:<path>."""
    allow_reward_judge: bool = False
    """Allow ``judge`` to equal ``train_rl.judge`` (the policy was trained against it: Goodhart)."""
    transcripts_in_report: int = 3
    """Harmful prompts whose responses from every model are shown in report.md; >= 0."""
    guard_models: tuple[str, ...] = ("train_rl",)
    """Models also evaluated with the latent guard on (plain prompts; docs/audit.md)."""
    guard_prompts: int = 30
    """Plain harmful and benign prompts (each) evaluated under the guard (decoded in batches of ``batch_size``); >= 0."""
    guard_threshold: float = 0.35
    """Latent p_safe below this counts as an unsafe token for the guard."""
    guard_patience: int = 4
    """Consecutive unsafe tokens before the guard stops generation."""
    routed_models: tuple[str, ...] = ("train_sft", "train_rl_text", "train_rl")
    """Models also evaluated behind the prompt router (``train_router``): rows ``<model>_routed``, each
    input answered by the model where the router routes it and by base elsewhere; needs ``base`` in
    ``models`` and the router folder (``--router``)."""

    def __post_init__(self) -> None:
        require(len(self.models) > 0,
                "evaluate.models is empty: list base and/or pipeline outputs, e.g. [base, train_rl].")
        require(set(self.attacks) <= set(attack_lib.ATTACKS),
                f"evaluate.attacks={list(self.attacks)!r}: choose from {attack_lib.ATTACKS}.")
        require(valid_judge(self.judge),
                f"evaluate.judge={self.judge!r}: use {HELDOUT}, one of {JUDGES} or hf:<path to a guard model>.")
        require(self.max_harmful >= 1, f"evaluate.max_harmful={self.max_harmful!r}: use 1 or more, e.g. 160.")
        require(self.max_benign >= 0, f"evaluate.max_benign={self.max_benign!r}: use 0 or more, e.g. 120.")
        require(self.attack_templates >= 1,
                f"evaluate.attack_templates={self.attack_templates!r}: use 1 or more, e.g. 3.")
        require(self.attack_prompts >= 0, f"evaluate.attack_prompts={self.attack_prompts!r}: use 0 or more, e.g. 40.")
        require(self.max_new_tokens >= 1, f"evaluate.max_new_tokens={self.max_new_tokens!r}: use 1 or more, e.g. 48.")
        require(self.batch_size >= 1, f"evaluate.batch_size={self.batch_size!r}: use 1 or more, e.g. 256.")
        require(self.batch_tokens >= 0,
                f"evaluate.batch_tokens={self.batch_tokens!r}: use 0 (no limit) or a token count, e.g. 12288.")
        require(self.guard_prompts >= 0, f"evaluate.guard_prompts={self.guard_prompts!r}: use 0 or more, e.g. 30.")


def check_judges(cfg: EvaluateConfig, params: dict) -> None:
    """Reported numbers come from a judge the policy was not trained against (Goodhart)."""
    reward = (params.get("train_rl") or {}).get("judge")
    require(cfg.allow_reward_judge or reward is None or judge_identity(cfg.judge) != judge_identity(reward),
            f"evaluate.judge={cfg.judge!r} is also train_rl.judge: the policy was trained to please it, so its "
            f"numbers would flatter the policy. Use evaluate.judge: {HELDOUT} (or another judge), or set "
            "evaluate.allow_reward_judge: true to insist.")


def test_prompts(prompts: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
    test = prompts[prompts.split == "test"].sort_values("prompt_id")
    harmful = test[test.prompt_kind == "harmful"].head(cfg.max_harmful)
    benign = test[test.prompt_kind == "benign"].head(cfg.max_benign)
    return pd.concat([harmful, benign]).reset_index(drop=True)


def build_inputs(prompts: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
    """One row per generation: plain harmful and benign, then each attack × the first
    ``attack_prompts`` harmful prompts (template k mod ``attack_templates``)."""
    rows = [{**p, "attack": "none", "template": -1, "input": p["prompt"]} for p in prompts.to_dict("records")]
    wrapped = prompts[prompts.prompt_kind == "harmful"].head(cfg.attack_prompts).to_dict("records")
    for name in cfg.attacks:
        attack = attack_lib.load(name, cfg.attack_templates)
        rows += [{**p, "attack": name, "template": attack.template_id(k), "input": attack.wrap(p["prompt"], k)}
                 for k, p in enumerate(wrapped)]
    return pd.DataFrame(rows)


def eval_set(inputs: pd.DataFrame, protocol: dict | None = None) -> dict:
    """What was evaluated and how: counts and one digest of every (prompt id, attack, input) plus the
    protocol (judge identity, token budget, engine, batching), so the promotion gate only compares
    rates measured the same way."""
    plain = inputs[inputs.attack == "none"]
    key = sorted(f"{r.prompt_id}|{r.attack}|{r.input}" for r in inputs.itertuples())
    protocol = protocol or {}
    return {"digest": stable_id(*key, json.dumps(protocol, sort_keys=True), length=32), "protocol": protocol,
            "harmful": int((plain.prompt_kind == "harmful").sum()),
            "benign": int((plain.prompt_kind == "benign").sum()),
            "attacks": {a: int((inputs.attack == a).sum()) for a in sorted(set(inputs.attack) - {"none"})}}


def _guard_inputs(inputs: pd.DataFrame, n: int) -> pd.DataFrame:
    plain = inputs[inputs.attack == "none"]
    return pd.concat([plain[plain.prompt_kind == k].head(n) for k in ("harmful", "benign")])


def run(cfg: EvaluateConfig, model_cfg: model_source.ModelConfig, prompts: pd.DataFrame,
        data_dir: Path = Path("data"), workspace: str = ".", router_dir: Path | None = None,
        cache: Path | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Evaluate every available model: (all transcripts, ``{model: metrics}``, eval_set).
    ``cache``: where each model's generations are kept and read back (``components.eval.generations``)."""
    chosen = test_prompts(prompts, cfg)
    require(len(chosen) > 0, "evaluate: no test prompts; check the ingest output.")
    inputs = build_inputs(chosen, cfg)
    judge = make_judge(cfg.judge)
    router = routing.load(router_dir, cfg.routed_models, cfg.models, model_cfg, workspace)
    frames, results, adapters, kept, routes = [], {}, {}, {}, None
    for name in cfg.models:
        spec = name if name == "base" or "/" in name else str(data_dir / name)
        if name != "base" and not Path(spec).exists():
            log.warning("skipping %s: %s does not exist", name, spec)
            continue
        lm = load_under_test(spec, model_cfg, workspace)
        if (Path(spec) / "adapter").is_dir():  # registration checks it evaluates this very adapter
            adapters[name] = dir_digest(Path(spec) / "adapter")
        t, nlls = decoded(cfg, lm, inputs, chosen, judge, cache)
        if name == "base" and router is not None:
            routes = routing.decide(router, lm, inputs)
        if name == "base" or name in cfg.routed_models:
            kept[name] = (t.copy(), nlls)
        t.insert(0, "model", name)
        frames.append(t)
        results[name] = {**eval_metrics.rates(t), "utility_nll": tx.mean_nll(nlls)}
        if name in cfg.guard_models and (Path(spec) / "head").exists() and cfg.guard_prompts:
            _guard(cfg, name, spec, lm, inputs, judge, frames, results)
        del lm
    require(len(frames) > 0, f"evaluate: none of the models {list(cfg.models)} exists; train them with "
                             "`craft run` or name existing model folders.")
    if routes is not None:
        routing.add_rows(kept, routes, inputs, frames, results)
    # batching is part of the protocol: in bf16 a greedy reply can part at a near-tie when its batch changes
    protocol = {"judge": judge_identity(cfg.judge), "max_new_tokens": cfg.max_new_tokens,
                "engine": model_cfg.engine, "batch_size": cfg.batch_size, "batch_tokens": cfg.batch_tokens}
    return pd.concat(frames, ignore_index=True), results, {**eval_set(inputs, protocol), "adapters": adapters}


def decoded(cfg: EvaluateConfig, lm: LoadedModel, inputs: pd.DataFrame, chosen: pd.DataFrame, judge: Judge,
            cache: Path | None) -> tuple[pd.DataFrame, list[tuple[str, float, int]]]:
    """``lm``'s judged transcripts of ``inputs`` and its reference-answer NLLs on ``chosen``: decoded,
    or read from ``cache`` when this model decoded these inputs the same way before (then judged anew)."""
    decoding = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "batch_tokens": cfg.batch_tokens}
    folder = _entry(cache, lm, inputs, chosen, decoding)
    kept = generations.read(folder, len(inputs), len(tx.reference_rows(chosen))) if folder is not None else None
    if kept is not None:
        log.info("%s: generations read from %s (same weights, inputs, decoding and code)", lm.model_id, folder)
        completions, nlls = kept
    else:
        completions = tx.complete(lm, inputs, cfg.max_new_tokens, cfg.batch_size, cfg.batch_tokens)
        nlls = tx.reference_nlls(lm, chosen)
        if folder is not None:
            generations.write(folder, completions, nlls, lm.model_id)
    return tx.judged(inputs, completions, judge), nlls


def _entry(cache: Path | None, lm: LoadedModel, inputs: pd.DataFrame, chosen: pd.DataFrame, decoding: dict
           ) -> Path | None:
    """``lm``'s cache entry folder, or None without a cache or when its key cannot be computed (said in
    the log: the cache only saves time, so the model is decoded instead)."""
    if cache is None:
        return None
    try:
        return generations.entry(cache, lm, inputs, chosen, decoding)
    except (OSError, RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        log.warning("%s: no evaluation cache key (%s): decoding it; set CRAFT_EVAL_CACHE=off to skip the cache",
                    lm.model_id, exc)
        return None


def _guard(cfg: EvaluateConfig, name: str, spec: str, lm, inputs: pd.DataFrame, judge, frames: list,
           results: dict) -> None:
    """The latent guard's rows (``<name>_guard``) on the first ``guard_prompts`` plain prompts of each kind."""
    from components.eval import audit

    audit_cfg = audit.AuditConfig(threshold=cfg.guard_threshold, patience=cfg.guard_patience, guard=True,
                                  max_new_tokens=cfg.max_new_tokens)
    head, _ = audit.load_head(Path(spec) / "head", lm.device)
    g, extra = tx.guarded(lm, head, _guard_inputs(inputs, cfg.guard_prompts), judge, audit_cfg, cfg.batch_size)
    g.insert(0, "model", f"{name}_guard")
    frames.append(g)
    results[f"{name}_guard"] = {**eval_metrics.rates(g), "utility_nll": results[name]["utility_nll"], **extra}


def comparisons(t: pd.DataFrame, focus: str = FOCUS) -> dict[str, float]:
    """``compare/<focus>_vs_<model>/<metric>_p``: McNemar exact p on the inputs both saw."""
    if focus not in set(t.model):
        return {}
    mine = t[t.model == focus]
    out = {}
    for other in sorted(set(t.model) - {focus}):
        for k, p in eval_metrics.paired(mine, t[t.model == other]).items():
            out[f"compare/{focus}_vs_{other}/{k}"] = p
    return out


def user_prompts(path: str | Path) -> pd.DataFrame:
    """A user's red-team file (prompt, prompt_kind[, category, reference]) as held-out test prompts."""
    from components.data.records import prompt_id
    from components.data.sources import read_source

    raw = read_source(f"file:{path}")
    require(len(raw) > 0, f"{path}: no prompts.")
    return pd.DataFrame([{"prompt_id": prompt_id(r.text), "prompt": r.text, "prompt_kind": r.prompt_kind,
                          "source": r.source, "category": r.category, "split": "test", "reference": r.reference}
                         for r in raw]).drop_duplicates("prompt_id")


def evaluate_file(model: str, prompts_path: str | Path, cfg: EvaluateConfig, model_cfg: model_source.ModelConfig,
                  out: Path, with_base: bool = False, router_dir: Path | None = None) -> dict:
    """``craft evaluate``: any model on any prompt file, same report as the stage. With ``router_dir``
    (a ``train_router`` router fitted on this base model) base is evaluated too and ``<model>_routed``
    rows report the model behind the router."""
    import dataclasses

    prompts = user_prompts(prompts_path)
    models = (("base",) if with_base or router_dir is not None else ()) + (model,)
    cfg = dataclasses.replace(cfg, models=models, max_harmful=len(prompts), max_benign=len(prompts),
                              routed_models=(model,) if router_dir is not None else ())
    t, results, evaluated = run(cfg, model_cfg, prompts, router_dir=router_dir)
    write_outputs(out, t, results, evaluated, {}, cfg, focus=model, source=prompts_path)
    return results


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--prompts", True, "ingest output (data/ingest/prompts.parquet)"),
        ("--judge-metrics", False, "train_judge's metrics.json: the judges' agreement with the gold set"),
        ("--router", False, "train_router's router folder (data/train_router/router): the <model>_routed rows"),
        ("--out", True, "output folder (data/evaluate)"),
    ])
    cfg = stage_config(EvaluateConfig, STAGE, params)
    check_judges(cfg, params)
    model_cfg = model_source.model_config(params)
    gold = json.loads(Path(args.judge_metrics).read_text()) if args.judge_metrics else {}
    out = Path(args.out)
    with tracking.stage_run(STAGE, cfg, model_cfg):
        t, results, evaluated = run(cfg, model_cfg, read_table(args.prompts),
                                    router_dir=Path(args.router) if args.router else None, cache=generations.root())
        write_outputs(out, t, results, evaluated, gold, cfg, source=args.prompts)
    return 0


def write_outputs(out: Path, t: pd.DataFrame, results: dict, evaluated: dict, gold: dict,
                  cfg: EvaluateConfig, focus: str = FOCUS, source: str | Path | None = None) -> None:
    """transcripts.parquet, eval_set.json, metrics.json, report.md, asr.png — and the same to MLflow,
    with the evaluated inputs (read from ``source``) as the run's evaluation dataset."""
    import mlflow

    write_table(out / "transcripts.parquet", t)
    write_json(out / "eval_set.json", evaluated)
    flat = {f"{model}/{k}": v for model, m in results.items() for k, v in m.items()}
    compare = {**comparisons(t, focus), **comparisons(t, f"{focus}_routed")}
    gold_keys = {k: v for k, v in gold.items() if k.startswith(("gold/", "judge/"))}
    contract = {"eval_set/harmful": evaluated["harmful"], "eval_set/benign": evaluated["benign"],
                **flat, **compare, **gold_keys}
    write_json(out / "metrics.json", contract)
    eval_report.asr_plot(results, out / "asr.png")
    eval_report.write(out / "report.md", t, results, compare, evaluated, gold, cfg.judge, LABELS,
                      cfg.transcripts_in_report, focus)
    if mlflow.active_run():
        mlflow.log_metrics({f"eval/{k}": float(v) for k, v in contract.items()
                            if isinstance(v, (int, float)) and v == v})
        mlflow.set_tag("eval.prompt_set", evaluated["digest"])
        for f in ("report.md", "asr.png", "metrics.json", "eval_set.json"):
            mlflow.log_artifact(str(out / f))
        log_evaluation_data(t, evaluated, source or out / "transcripts.parquet")


def log_evaluation_data(t: pd.DataFrame, evaluated: dict, source: str | Path) -> None:
    """The active run's evaluation dataset (every input once, digest = the eval-set digest the
    promotion gate compares) and ``transcripts.json``, an MLflow table of all transcripts."""
    import mlflow

    first = t[t.model == t.model.iloc[0]]  # every model saw the same inputs; guard rows come later
    inputs = first[[c for c in INPUT_COLUMNS if c in first.columns]].reset_index(drop=True)
    datasets.log_dataset(inputs, source, "eval_set", "evaluation", digest=evaluated["digest"])
    mlflow.log_table(t.apply(_capped), artifact_file="transcripts.json")


def _capped(col: pd.Series) -> pd.Series:
    """Text cells cut to ``TABLE_CHARS`` (a cut one ends in …), so the table stays small enough to browse."""
    if not (col.dtype == object or pd.api.types.is_string_dtype(col)):
        return col
    return col.map(lambda v: v[:TABLE_CHARS - 1] + "…" if isinstance(v, str) and len(v) > TABLE_CHARS else v)


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
