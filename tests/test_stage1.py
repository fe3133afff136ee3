"""extract → train_head on the tiny model: files, shapes, manifest, metrics, plot."""
import json

import torch

from components import extract
from components.lm import features
from components.head import metrics as head_metrics
from components.extract import ExtractConfig
from components.head.model import SafetyHead
from components.lm.source import ModelConfig
from components.train_head import TrainHeadConfig, _split, train
from tests.factories import good_frame


def test_extract_then_train_head(tiny_model_dir, tmp_path):
    df = good_frame(12)
    model = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    cfg = ExtractConfig(layers=(-1, 1), batch_size=8, shard_rows=16)  # several shards
    manifest = extract.run(cfg, model, df, tmp_path / "extract")
    assert manifest["rows"] == len(df) and len(manifest["shards"]) == 3
    assert list(manifest["spec"]["layers"]) == [-1, 1]
    feats = features.load(tmp_path / "extract")
    assert feats.h.shape == (len(df), 2, 32) and feats.h_aug.shape == feats.h.shape
    assert list(feats.rows.trace_id) == list(df.trace_id)
    assert not torch.equal(feats.h, feats.h_aug)  # word dropout changed the positive view

    head, history = train(TrainHeadConfig(hidden_dim=32, out_dim=16, epochs=4, batch_size=8), feats)
    assert 1 <= len(history) <= 4 and head.spec.layers == (-1, 1)
    h_tr, _, y_tr = _split(feats, "train")
    h_va, _, y_va = _split(feats, "val")
    metrics = head_metrics.evaluate(head, h_tr, y_tr, h_va, y_va)
    for key in ("head/auroc", "head/probe_auroc", "baseline/diffmeans_auroc", "head/confusion"):
        assert key in metrics
    head_metrics.projection_plot(head, h_tr, y_tr, h_va, y_va, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    head.save(tmp_path / "head")
    assert json.loads((tmp_path / "head" / "head.json").read_text())["in_dim"] == 64
    assert torch.equal(SafetyHead.load(tmp_path / "head").prototypes, head.prototypes)


def test_diffmeans_separates_shifted_classes():
    h = torch.randn(40, 8)
    y = torch.arange(40) % 2
    h[y == 0, 3] += 4.0
    d = head_metrics.diffmeans_direction(h, y)
    assert d.abs().argmax() == 3 and d[3] > 0
