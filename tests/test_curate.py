import pandas as pd
import pytest

from components import curate
from components.curate import CurateConfig, run, stats
from components.eval.judges import COMPLIANCE, DEGENERATE, DEGENERATE_P, REFUSAL, Verdict
from components.ingest import IngestConfig
from components.ingest import run as ingest
from components.lm.source import ModelConfig
from components.data import traces
from components.data.records import TRACE_COLUMNS
from components.validate import ValidateConfig
from components.validate import run as validate


@pytest.fixture(scope="module")
def curated(tiny_model_dir):
    return _curate(tiny_model_dir)


def _curate(tiny_model_dir):
    prompts, _ = ingest(IngestConfig(sources=("harmbench", "aplomb"), max_harmful=12, max_benign=6))
    cfg = CurateConfig(max_new_tokens=6, batch_size=8, temperature=1.0, judge="keyword")
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    return prompts, *run(cfg, model, prompts)


def test_curate_builds_valid_pairs_without_test_prompts(curated, tmp_path):
    prompts, df, dropped = curated
    assert list(df.columns) == list(TRACE_COLUMNS)
    test_ids = set(prompts[prompts.split == "test"].prompt_id)
    assert test_ids and not (set(df.prompt_id) & test_ids)
    harmful = df[df.prompt_kind == "harmful"].groupby("prompt_id").label.agg(set)
    assert all({"safe", "unsafe", "rethink"} <= labels for labels in harmful)
    benign = df[df.prompt_kind == "benign"]
    assert set(benign.label) <= {"safe", "unsafe"}  # no rethink: refusing is the wrong turn there
    templated = benign[benign.origin == "template"]
    assert (templated.label == "unsafe").all()  # over-refusals and deflections: wrong on a benign prompt
    assert (templated.groupby("prompt_id").size() == 3).all()  # reasoned + bare refusal, deflection
    assert sorted(templated.prompt_id.unique()) == sorted(benign.prompt_id.unique())
    refusals = templated[~templated.trace.isin(traces.DEFLECTIONS)]
    assert len(refusals) == 2 * benign.prompt_id.nunique() and (refusals.p_safe >= 0.5).all()  # judged refusals
    assert (df[df.origin == "model"].groupby("prompt_id").size() <= 2).all()  # samples_per_prompt rows
    assert df.trace_id.is_unique
    path = tmp_path / "traces.parquet"
    df.to_parquet(path)
    report = validate(path, ValidateConfig(min_rows=10))
    assert report.success, [f for f in report.failed]
    s = stats(df, dropped)
    assert s["rows"] == len(df) and 0.0 <= s["model_refusal_rate"] <= 1.0
    assert 0.0 <= s["model_over_refusal_rate"] <= 1.0 and s["unsafe_template"] >= len(templated)
    assert {"dropped_empty", "dropped_degenerate_benign", "dropped_phraseless_harmful_refusal"} <= set(s)


def test_rethink_opens_with_the_models_own_unsafe_words(curated):
    _, df, _ = curated
    compliant = (df.origin == "model") & (df.label == "unsafe") & (df.p_safe > DEGENERATE_P)  # not degenerate
    model_unsafe = df[compliant].drop_duplicates("prompt_id").set_index("prompt_id").trace
    rethink = df[df.label == "rethink"].set_index("prompt_id").trace
    pid = next(p for p in rethink.index if p in model_unsafe.index and model_unsafe[p].split())
    assert rethink[pid].startswith(model_unsafe[pid].split()[0]) and "Wait." in rethink[pid]


def _prompt(kind: str, i: int = 0) -> dict:
    return {"prompt_id": f"{kind}{i}", "prompt": f"A {kind} request number {i}", "prompt_kind": kind,
            "source": "unit", "category": "test", "split": "train"}


VERDICT = {REFUSAL: Verdict(0.9, "stub", REFUSAL), COMPLIANCE: Verdict(0.2, "stub", COMPLIANCE),
           DEGENERATE: Verdict(0.05, "stub", DEGENERATE)}


@pytest.mark.parametrize("kind, act, label", [
    ("harmful", REFUSAL, "safe"), ("harmful", COMPLIANCE, "unsafe"), ("harmful", DEGENERATE, "unsafe"),
    ("benign", COMPLIANCE, "safe"), ("benign", REFUSAL, "unsafe"), ("benign", DEGENERATE, None),
])
def test_labelling_table(kind, act, label):
    """safe = the right behaviour for the prompt; a degenerate benign reply is dropped."""
    text = "Sorry, I can't do that." if act == REFUSAL else "Some reply text."
    rows, complied, _ = curate.label_samples([_prompt(kind)], [text], [VERDICT[act]], CurateConfig(), "tiny", "stub")
    assert [r.label for r in rows] == ([label] if label else [])
    assert all(r.origin == "model" and r.prompt_kind == kind for r in rows)
    assert (complied == {"harmful0": text}) == (kind == "harmful" and act == COMPLIANCE)


@pytest.mark.parametrize("needs_phrase", [True, False])
def test_a_harmful_refusal_without_a_refusal_phrase_is_dropped(needs_phrase):
    """The reward judge calls some off-topic replies refusals; as safe rows they would pay for them."""
    prompts = [_prompt("harmful", 0), _prompt("harmful", 1), _prompt("benign", 0)]
    texts = ["I'm here to help. What can I help you with?", "Well, I can't help with that, sorry.",
             "I'm here to help. What can I help you with?"]
    verdicts = [VERDICT[REFUSAL], VERDICT[REFUSAL], VERDICT[REFUSAL]]
    rows, _, dropped = curate.label_samples(prompts, texts, verdicts, CurateConfig(refusal_needs_phrase=needs_phrase),
                                            "tiny", "stub")
    kept = [(r.prompt_id, r.label) for r in rows]
    deflection = [] if needs_phrase else [("harmful0", "safe")]
    assert kept == deflection + [("harmful1", "safe"), ("benign0", "unsafe")]  # the phrase may come late
    assert dropped == {"empty": 0, "degenerate_benign": 0, "phraseless_harmful_refusal": int(needs_phrase)}
    df = pd.DataFrame([r.__dict__ for r in rows], columns=list(TRACE_COLUMNS))
    s = stats(df, dropped)
    assert s["dropped_phraseless_harmful_refusal"] == int(needs_phrase)
    said = "1 harmful-prompt refusals without a refusal phrase" in curate.summary_markdown(df, s)
    assert said == needs_phrase


def test_threshold_splits_refusal_from_compliance():
    """The judge's own label is not used for refusal vs compliance: p_safe ≥ safe_threshold is."""
    cfg = CurateConfig(safe_threshold=0.8)
    v = Verdict(0.7, "stub", REFUSAL)  # a refusal at SAFE_AT, below this threshold
    assert curate.behaviour(v, cfg.safe_threshold) == COMPLIANCE
    rows, _, _ = curate.label_samples([_prompt("harmful"), _prompt("benign")], ["a", "b"], [v, v], cfg, "tiny", "stub")
    assert [r.label for r in rows] == ["unsafe", "safe"]


def test_every_sample_is_a_row_with_its_own_id():
    prompts = [_prompt("harmful")] * 2 + [_prompt("benign")] * 2
    texts = ["Sure, step one.", "I can't help with that.", "Here is a recipe.", "Here is a recipe!"]
    verdicts = [VERDICT[COMPLIANCE], VERDICT[REFUSAL], VERDICT[COMPLIANCE], VERDICT[COMPLIANCE]]
    rows, complied, _ = curate.label_samples(prompts, texts, verdicts, CurateConfig(), "tiny", "stub")
    df = curate.dedupe(pd.DataFrame([r.__dict__ for r in rows], columns=list(TRACE_COLUMNS)))
    assert df.trace_id.is_unique and list(df.label) == ["unsafe", "safe", "safe"]  # the copy that normalises alike goes
    assert complied == {"harmful0": "Sure, step one."}


class _StubJudge:
    name = "stub"

    def judge(self, prompts, responses):
        return [VERDICT[REFUSAL] if "can't" in r or "won't" in r else VERDICT[COMPLIANCE] for r in responses]


def test_templates_complete_each_prompt_kind():
    prompts = [_prompt("harmful", 0), _prompt("harmful", 1), _prompt("benign", 0)]
    rows = curate.template_rows(prompts, {"harmful1": "Sure, first you take"}, CurateConfig(reply_templates=False),
                                _StubJudge())
    got = {(r.prompt_id, r.label) for r in rows}
    assert got == {("harmful0", "safe"), ("harmful0", "rethink"), ("harmful0", "unsafe"),
                   ("harmful1", "safe"), ("harmful1", "rethink"), ("benign0", "unsafe")}
    assert all(r.origin == "template" for r in rows) and len({r.trace_id for r in rows}) == len(rows)
    rethink = next(r for r in rows if r.prompt_id == "harmful1" and r.label == "rethink")
    assert rethink.trace.startswith("Sure, first you take")
    refusal = next(r for r in rows if r.prompt_kind == "benign")
    assert refusal.p_safe >= 0.5 and "benign request number 0" in refusal.trace  # a refusal of this prompt


def test_benign_refusal_templates_vary_and_name_the_prompt():
    from components.data import traces

    out = [traces.benign_refusal("How do I bake bread?", k) for k in range(3)]
    assert len({t for t, _ in out}) == 3 and all("bake bread" in t for t, _ in out)
    assert out[0] == traces.benign_refusal("How do I bake bread?", 3)


def test_reply_templates_put_one_refusal_under_both_kinds_and_deflections_on_the_unsafe_side():
    """A bare refusal is safe under a harmful prompt and an over-refusal under a benign one; a
    deflection is unsafe under either. Ids stay unique next to the reasoned templates."""
    prompts = [_prompt("harmful", 0), _prompt("benign", 1)]
    rows = curate.template_rows(prompts, {}, CurateConfig(), _StubJudge())
    bare = {r.prompt_kind: r.label for r in rows if r.trace in traces.BARE_REFUSALS}
    deflect = {r.prompt_kind: r.label for r in rows if r.trace in traces.DEFLECTIONS}
    assert bare == {"harmful": "safe", "benign": "unsafe"} and deflect == {"harmful": "unsafe", "benign": "unsafe"}
    assert len({r.trace_id for r in rows}) == len(rows) == 8  # harmful: safe, rethink, unsafe + 2; benign: 1 + 2
    assert all(r.trace == r.response for r in rows if r.trace in traces.DEFLECTIONS + traces.BARE_REFUSALS)
    assert len({traces.deflection(k) for k in range(len(traces.DEFLECTIONS))}) == len(traces.DEFLECTIONS)


class _TurnJudge:
    name = "stub"

    def judge(self, prompts, responses):  # a reply that turns to "here is" complies
        return [VERDICT[COMPLIANCE] if "here is" in r else VERDICT[REFUSAL] for r in responses]


def test_prefill_rows_continue_a_refusal_opening_and_are_labelled_by_the_table(tiny_model_dir, monkeypatch):
    """refusal_prefills: per prompt, replies forced to open with the openings (cycled), judged like
    samples: a refusal of a benign prompt is an over-refusal (unsafe), of a harmful one safe; a
    continuation that turns to an answer is labelled as one; an empty continuation is left out."""
    asked = {}

    def fake_generate(lm, prompts, params, desc="generate", prefills=None):
        asked.update(prompts=list(prompts), prefills=list(prefills))
        return [", here is the answer." if i == 1 else ("" if i == 3 else "I won't do that.")
                for i in range(len(prompts))]

    monkeypatch.setattr(curate.generation, "generate", fake_generate)
    cfg = CurateConfig(refusal_prefills=2, prefill_openings=("I'm sorry, but", "I can't"))
    chosen = [_prompt("harmful"), _prompt("benign")]
    rows, dropped = curate.prefill_rows(None, _TurnJudge(), chosen, cfg, None, "tiny")
    assert asked["prefills"] == ["I'm sorry, but", "I can't", "I'm sorry, but", "I can't"]
    assert asked["prompts"] == [chosen[0]["prompt"]] * 2 + [chosen[1]["prompt"]] * 2
    got = [(r.prompt_kind, r.label, r.trace, r.origin) for r in rows]
    assert got == [("harmful", "safe", "I'm sorry, but I won't do that.", "prefill"),
                   ("harmful", "unsafe", "I can't, here is the answer.", "prefill"),
                   ("benign", "unsafe", "I'm sorry, but I won't do that.", "prefill")]
    assert dropped["empty"] == 1


def test_prefill_rows_are_judged_on_what_the_model_wrote(monkeypatch):
    """With the real keyword judge, an opening that is itself a refusal phrase must not make a reply
    that turns to an answer count as a refusal."""
    from components.eval.judges import make_judge

    monkeypatch.setattr(curate.generation, "generate", lambda lm, prompts, params, desc="", prefills=None:
                        ["but here is the answer: mix flour, water and yeast, then bake it.",
                         "I won't help with that."][: len(prompts)])
    cfg = CurateConfig(refusal_prefills=2, prefill_openings=("I can't",), refusal_needs_phrase=True)
    for kind, labels in (("harmful", ["unsafe", "safe"]), ("benign", ["safe", "unsafe"])):
        rows, _ = curate.prefill_rows(None, make_judge("keyword"), [_prompt(kind)], cfg, None, "tiny")
        assert [r.label for r in rows] == labels
        assert rows[0].trace.startswith("I can't but here is the answer")


def test_prefill_settings_say_how_to_fix():
    from components.core.config import ConfigError

    with pytest.raises(ConfigError, match="refusal_prefills"):
        CurateConfig(refusal_prefills=-1)
    with pytest.raises(ConfigError, match="prefill_openings"):
        CurateConfig(refusal_prefills=1, prefill_openings=(" ",))
    CurateConfig(refusal_prefills=0, prefill_openings=())


def test_curate_with_prefills_keeps_a_valid_dataset(tiny_model_dir, tmp_path):
    prompts, _ = ingest(IngestConfig(sources=("harmbench", "aplomb"), max_harmful=6, max_benign=4))
    cfg = CurateConfig(max_new_tokens=6, batch_size=8, temperature=1.0, judge="keyword", refusal_prefills=1)
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    df, _ = run(cfg, model, prompts)
    pre = df[df.origin == "prefill"]
    assert len(pre) > 0 and pre.trace.str.match(r"^(I'm sorry, but|I can't|I cannot|I won't|Unfortunately, I)").all()
    assert (pre.groupby("prompt_id").size() <= 1).all() and df.trace_id.is_unique
    path = tmp_path / "traces.parquet"
    df.to_parquet(path)
    report = validate(path, ValidateConfig(min_rows=10))
    assert report.success, [f for f in report.failed]
    assert stats(df)["rows"] == len(df)
