"""extract → train_head on the tiny model: files, shapes, manifest, metric values, plot."""
import json
import math

import numpy as np
import pandas as pd
import torch

from components import extract, train_head
from components.lm import features
from components.head import metrics as head_metrics
from components.extract import ExtractConfig
from components.head.model import SafetyHead
from components.lm.source import ModelConfig
from components.train_head import _split
from tests.factories import good_frame


def test_extract_then_train_head(tiny_model_dir, tmp_path):
    df = good_frame(12)
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    cfg = ExtractConfig(layers=(-1, 1), batch_size=8, shard_rows=16)  # several shards
    manifest = extract.run(cfg, model, df, tmp_path / "extract")
    assert manifest["rows"] == len(df) and len(manifest["shards"]) == 3
    assert list(manifest["spec"]["layers"]) == [-1, 1]
    assert manifest["spec"]["pool_over"] == "all"  # the default: the head sees what was asked
    feats = features.load(tmp_path / "extract")
    assert feats.h.shape == (len(df), 2, 32) and feats.h_aug.shape == feats.h.shape
    assert list(feats.rows.trace_id) == list(df.trace_id)
    assert not torch.equal(feats.h, feats.h_aug)  # word dropout changed the positive view

    out = tmp_path / "train_head"
    (tmp_path / "params.yaml").write_text("train_head: {hidden_dim: 32, out_dim: 16, epochs: 4, batch_size: 8}\n")
    assert train_head.main(["--features", str(tmp_path / "extract"), "--out", str(out),
                            "--params", str(tmp_path / "params.yaml")]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(len(history))) and 1 <= len(history) <= 4
    assert all(k == "epoch" or k.startswith("head/") for row in history for k in row)
    val = [row["head/val_total"] for row in history]
    assert all(math.isfinite(v) for v in val) and min(val) < val[0]  # the validation loss fell

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == len(history)
    n_val = int((df.split == "val").sum())
    confusion = metrics["confusion"]
    assert len(confusion) == 3 and all(len(row) == 3 for row in confusion)
    assert sum(map(sum, confusion)) == n_val
    assert [sum(row) for row in confusion] == [int(((df.split == "val") & (df.label == lab)).sum())
                                               for lab in ("safe", "unsafe", "rethink")]  # rows = true label
    assert 0 <= metrics["head/val_accuracy"] <= 1
    assert metrics["head/val_accuracy"] == sum(confusion[i][i] for i in range(3)) / n_val
    for key in ("head/auroc", "head/probe_auroc", "baseline/diffmeans_auroc"):
        assert 0.8 < metrics[key] <= 1, key  # the tiny data's classes are separable: far above chance
    # every row is templated and harmful: the template AUROC is the AUROC, the others have no rows
    assert metrics["head/auroc_template_rows"] == metrics["head/auroc"]
    assert math.isnan(metrics["head/auroc_model_rows"]) and math.isnan(metrics["head/auroc_benign"])
    assert "over-refusal AUROC" in (out / "summary.md").read_text()
    cosines = {k: v for k, v in metrics.items() if k.startswith("head/cos_")}
    assert len(cosines) == 9 and all(-1 <= v <= 1 for v in cosines.values())
    assert metrics["head/cos_safe_to_safe"] > metrics["head/cos_safe_to_unsafe"]
    assert metrics["head/cos_unsafe_to_unsafe"] > metrics["head/cos_unsafe_to_safe"]
    assert -1 <= metrics["head/silhouette"] <= 1
    assert (out / "projection.png").stat().st_size > 1000

    head = SafetyHead.load(out / "head")
    assert head.spec.layers == (-1, 1) and head.spec == feats.spec  # RL and audit read the spec from the head
    assert json.loads((out / "head" / "head.json").read_text())["in_dim"] == 64
    h_tr, _, y_tr = _split(feats, "train")
    h_va, _, y_va = _split(feats, "val")
    again = head_metrics.evaluate(head, h_tr, y_tr, h_va, y_va, feats.rows[(feats.rows.split == "val").to_numpy()])
    assert again["head/auroc"] == metrics["head/auroc"] and again["head/confusion"] == confusion
    assert again["head/auroc_template_rows"] == metrics["head/auroc_template_rows"]


def test_diffmeans_separates_shifted_classes():
    h = torch.randn(40, 8)
    y = torch.arange(40) % 2
    h[y == 0, 3] += 4.0
    d = head_metrics.diffmeans_direction(h, y)
    assert d.abs().argmax() == 3 and d[3] > 0


def test_subset_aurocs_slice_by_origin_and_prompt_kind():
    """Model rows ranked right, template rows ranked wrong, benign rows (answer vs refusal) right."""
    rows = pd.DataFrame({"origin": ["model"] * 4 + ["template"] * 4 + ["model", "template"],
                         "prompt_kind": ["harmful"] * 8 + ["benign"] * 2})
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 1])  # SAFE = 0, UNSAFE = 1
    score = np.array([0.9, 0.8, 0.1, 0.2, 0.1, 0.2, 0.9, 0.8, 0.7, 0.3])
    got = head_metrics.subset_aurocs(score, y, rows)
    assert got == {"head/auroc_model_rows": 1.0, "head/auroc_template_rows": 0.0, "head/auroc_benign": 1.0}
    only_safe = head_metrics.subset_aurocs(score, np.where(rows.prompt_kind == "benign", 0, y), rows)
    assert math.isnan(only_safe["head/auroc_benign"])  # benign rows of one class: no AUROC
    assert all(math.isnan(v) for v in head_metrics.subset_aurocs(score, y, None).values())


def test_prefill_rows_get_their_own_auroc_only_when_present():
    rows = pd.DataFrame({"origin": ["prefill", "prefill", "model", "model"], "prompt_kind": ["benign"] * 4})
    y = np.array([0, 1, 0, 1])
    got = head_metrics.subset_aurocs(np.array([0.2, 0.9, 0.9, 0.1]), y, rows)
    assert got["head/auroc_prefill_rows"] == 0.0 and got["head/auroc_model_rows"] == 1.0


def test_evaluate_reports_subset_aurocs_on_a_tiny_head():
    torch.manual_seed(0)
    y = torch.arange(24) % 3
    h = torch.randn(24, 1, 8) + 3.0 * torch.nn.functional.one_hot(y, 8).unsqueeze(1)  # [24, 1, 8]
    head = SafetyHead(8, 16, 4)
    head.set_input_stats(h)
    with torch.no_grad():
        head.init_prototypes(head.embed(h), y)
    rows = pd.DataFrame({"origin": ["model", "template"] * 12, "prompt_kind": ["benign"] * 12 + ["harmful"] * 12})
    m = head_metrics.evaluate(head, h, y, h, y, rows)
    for key in ("head/auroc_model_rows", "head/auroc_template_rows", "head/auroc_benign"):
        assert 0.5 < m[key] <= 1.0, key  # the class means are far apart


def test_head_summary_mentions_a_missing_class_only_when_an_auroc_is_nan():
    from components.train_head import summary_markdown

    assert "a class is missing" not in summary_markdown({"head/auroc": 0.9, "head/auroc_benign": 0.8}, [])
    assert "a class is missing" in summary_markdown({"head/auroc": 0.9, "head/auroc_benign": float("nan")}, [])
