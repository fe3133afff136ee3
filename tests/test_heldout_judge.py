"""The held-out evaluation judge: fit on labelled rows, JSON round trip, rules first, and the train_judge stage."""
import json

import pandas as pd
import pytest

from components import train_judge
from components.eval import gold, heldout
from components.eval.judges import make_judge
from tests.factories import GOLD_COMPLY as COMPLY
from tests.factories import GOLD_HARM as HARM
from tests.factories import GOLD_REFUSE as REFUSE
from tests.factories import gold_frame, gold_triples



def test_fit_predicts_its_training_classes_and_round_trips(tmp_path):
    prompts, replies, labels = gold_triples()
    judge = heldout.fit(prompts, replies, labels)
    path = judge.save(tmp_path / "judge.json")
    loaded = make_judge(f"heldout:{path}")
    got = [v.label for v in loaded.judge(prompts, replies)]
    assert sum(g == t for g, t in zip(got, labels)) >= 16  # of 18: it learns refusal vs compliance
    assert [v.label for v in loaded.judge(prompts[2::3], replies[2::3])] == ["degenerate"] * 6
    assert json.loads(path.read_text())["kind"] == "craft-heldout-judge"  # JSON weights, no pickle
    refusal, compliance = loaded.judge([HARM[0]] * 2, [REFUSE[0], COMPLY[0]])
    assert refusal.p_safe > compliance.p_safe  # p_safe = P(refusal): the reward sign


def test_missing_judge_file_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train_judge"):
        make_judge(f"heldout:{tmp_path / 'nope.json'}")


def test_train_judge_stage_scores_every_judge_on_the_test_split(tmp_path):
    path = tmp_path / "labels.jsonl"
    gold_frame().to_json(path, orient="records", lines=True)
    metrics = train_judge.run(train_judge.TrainJudgeConfig(compare=("keyword",)), gold.load(path), tmp_path / "out")
    assert metrics["gold/rows"] == 36 and metrics["gold/test_rows"] == 18
    assert metrics["judge/heldout/gold_kappa"] > 0.6 and "judge/keyword/gold_kappa" in metrics
    assert (tmp_path / "out" / "judge.json").exists()
    assert "κ" in train_judge.report(metrics)


def test_gold_loader_rejects_unknown_labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    pd.DataFrame([{c: "x" for c in gold.COLUMNS + gold.LABEL_COLUMNS}]).to_json(path, orient="records", lines=True)
    with pytest.raises(Exception, match="unknown label"):
        gold.load(path)


def test_inter_annotator_agreement_is_reported():
    gold = pd.DataFrame({"id": list("abcde"), "label": ["refusal", "compliance", "degenerate", "refusal", "refusal"]})
    second = pd.DataFrame({"id": list("abcd"), "label_second": ["refusal", "compliance", "degenerate", "compliance"]})
    m = train_judge.inter_annotator(gold, second)
    assert m["gold/second_label_rows"] == 4 and m["gold/inter_annotator_agreement"] == 0.75
    assert 0 < m["gold/inter_annotator_kappa"] < 1 and train_judge.inter_annotator(gold, None) == {}
    with pytest.raises(Exception, match="label_second"):
        train_judge.inter_annotator(gold, second.drop(columns="label_second"))


def test_gold_rows_on_evaluation_prompts_are_refused():
    gold = gold_frame()
    prompts = pd.DataFrame({"prompt_id": [gold.prompt_id[0], "other"], "split": ["test", "train"]})
    with pytest.raises(Exception, match="evaluation"):
        train_judge.require_disjoint(gold, prompts)
    train_judge.require_disjoint(gold, prompts.assign(split="train"))
