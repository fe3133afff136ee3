"""The benchmarks run the library's current API: `make bench` is not part of CI, so an API change
that breaks a benchmark would otherwise go unnoticed until someone measures."""
from __future__ import annotations

import argparse

import torch


def test_rl_step_benchmark_drives_the_current_rl_loop(tiny_model_dir):
    from benchmarks import bench_rl_step
    from components.head.model import SafetyHead
    from components.lm import runtime
    from components.lm import source as model_source
    from components.lm.latents import LatentSpec

    cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
    lm = runtime.load(model_source.resolve(cfg), cfg)  # its own copy: the benchmark wraps it in LoRA
    lm.tokenizer.padding_side = "left"
    torch.manual_seed(0)
    head = SafetyHead(lm.model.config.hidden_size, 16, 8, LatentSpec()).eval()
    args = argparse.Namespace(steps=1, prompts_per_step=2, group=2, new=4)
    times = bench_rl_step.ours(args, lm, head, ["How do I bake bread?", "Tell me how to pick a lock.", "Hi"])
    assert len(times) == 1 and times[0] > 0  # one timed step after the warm-up step
    assert not any("lora" in n for n, _ in lm.model.named_parameters())  # the base model is given back


def test_side_by_side_worker_trains_and_hashes_its_adapter(tiny_model_dir, monkeypatch):
    from benchmarks import bench_side_by_side, common
    from components.lm import runtime
    from components.lm import source as model_source

    def load(kind, device, dtype):
        cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)
        return runtime.load(model_source.resolve(cfg), cfg), 0

    monkeypatch.setattr(common, "load", load)
    args = argparse.Namespace(model="tiny", device="cpu", dtype="float32", threads=1, steps=1)
    first, again = bench_side_by_side.worker(args), bench_side_by_side.worker(args)
    assert len(first["times"]) == 1 and len(first["lora_sha"]) == 16
    assert first["lora_sha"] == again["lora_sha"]  # same seed, same threads: the same adapter


def test_allocator_worker_times_the_encode_and_sft_workloads_and_hashes_their_output(tiny_model_dir, monkeypatch):
    from benchmarks import bench_allocator, common
    from components.lm import runtime
    from components.lm import source as model_source

    def load(kind, device, dtype, allocator="keep"):
        cfg = model_source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1,
                                       allocator=allocator)
        return runtime.load(model_source.resolve(cfg), cfg), 0

    monkeypatch.setattr(common, "load", load)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the worker's thread count stays out of later tests
    for workload in ("encode", "sft"):
        args = argparse.Namespace(model="tiny", device="cpu", dtype="float32", threads=1, repeats=1,
                                  workload=workload, allocator="system")
        first, again = bench_allocator.worker(args), bench_allocator.worker(args)
        assert first["s"] > 0 and first["peak_rss_gib"] > 0 and len(first["digest"]) == 16
        assert first["digest"] == again["digest"]  # deterministic: the peers' outputs are comparable


def test_eval_cache_benchmark_reads_back_what_it_decoded(tiny_lm, monkeypatch):
    from benchmarks import bench_eval_cache
    from components.eval.judges import KeywordRefusalJudge
    from components.evaluate import EvaluateConfig
    from tests.test_evaluate import _tiny_prompts

    from components.eval import transcripts

    cfg = EvaluateConfig(models=("base",), max_new_tokens=4, attacks=("past_tense",), judge="keyword")
    decodes = []
    real = transcripts.complete
    monkeypatch.setattr(transcripts, "complete", lambda *a, **k: decodes.append(1) or real(*a, **k))
    cold, warm = bench_eval_cache.measure(tiny_lm, cfg, _tiny_prompts(), KeywordRefusalJudge())
    assert len(decodes) == 1  # the warm peer read the cold one's entry back
    assert cold["same_rows"] == 5 and warm["same_rows"] == 5  # 3 plain + 2 wrapped, every row equal
    assert warm["seconds"] > 0 and warm["speedup"] > 0
