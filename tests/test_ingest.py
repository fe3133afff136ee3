import pandas as pd

from components.ingest import IngestConfig, run, split_of
from components.data.sources import read_source
from components.data.records import PROMPT_COLUMNS, normalise


def test_packaged_sources_read():
    for name, kind in (("harmbench", "harmful"), ("aplomb", "benign")):
        prompts = read_source(name)
        assert len(prompts) >= 40 and all(p.prompt_kind == kind for p in prompts)


def test_ingest_dedups_caps_and_splits():
    cfg = IngestConfig(sources=("harmbench", "redharness", "aplomb"), max_harmful=40, max_benign=20,
                       max_val_benign=None)
    df, stats = run(cfg)
    assert list(df.columns) == list(PROMPT_COLUMNS)
    assert df["prompt"].map(normalise).is_unique and df["prompt_id"].is_unique
    pool = df[df.split != "test"]  # the caps bound the training pool; the test set has its own
    assert (pool.prompt_kind == "harmful").sum() == 40 and (pool.prompt_kind == "benign").sum() == 20
    assert set(df.split) == {"train", "val", "test"}
    test = df[df.split == "test"]
    assert 0 < (test.prompt_kind == "harmful").sum() <= cfg.max_test_harmful
    assert {"harmbench", "redharness"} <= set(df[df.prompt_kind == "harmful"].source)  # round-robin


def test_a_val_cap_draws_val_apart_from_train():
    """With ``max_val_benign`` the benign val split is capped on its own and ``max_benign`` bounds
    train alone; harmful prompts without a val cap still share one train + val cap."""
    sources = ("harmbench", "aplomb", "lookalikes")
    shared, _ = run(IngestConfig(sources=sources, max_harmful=30, max_benign=40, max_val_benign=None))
    apart, _ = run(IngestConfig(sources=sources, max_harmful=30, max_benign=40, max_val_benign=25))
    count = lambda df, kind, split: int(((df.prompt_kind == kind) & (df.split == split)).sum())
    assert count(apart, "benign", "train") == 40 and count(apart, "benign", "val") == 25
    assert count(shared, "benign", "val") < 25
    assert count(shared, "benign", "train") + count(shared, "benign", "val") == 40
    assert set(apart[apart.split == "val"].source) >= {"aplomb", "benign_lookalikes"}  # round-robin within val too
    for df in (shared, apart):  # harmful: one cap over train + val either way, and test untouched
        assert count(df, "harmful", "train") + count(df, "harmful", "val") == 30
    harmful_apart, _ = run(IngestConfig(sources=sources, max_harmful=30, max_val_harmful=5, max_benign=40))
    assert count(harmful_apart, "harmful", "train") == 30 and count(harmful_apart, "harmful", "val") == 5
    assert set(shared[shared.split == "test"].prompt_id) == set(apart[apart.split == "test"].prompt_id)


def test_a_val_cap_of_zero_keeps_no_val_prompts_of_that_kind():
    df, _ = run(IngestConfig(sources=("harmbench", "aplomb"), max_harmful=20, max_benign=10, max_val_benign=0))
    assert not ((df.prompt_kind == "benign") & (df.split == "val")).any()
    assert ((df.prompt_kind == "benign") & (df.split == "train")).sum() == 10


def test_split_is_a_function_of_the_prompt_only():
    """Growing the sources never moves a prompt to another split (no leakage across versions)."""
    small, _ = run(IngestConfig(sources=("aplomb",), max_harmful=1, max_benign=100))
    big, _ = run(IngestConfig(sources=("aplomb", "redharness", "forgelm"), max_harmful=1, max_benign=100))
    merged = small.merge(big, on="prompt_id", suffixes=("_a", "_b"))
    assert len(merged) == len(small) and (merged.split_a == merged.split_b).all()


def test_user_prompt_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    pd.DataFrame({"prompt": ["How to pick a lock on my neighbour's door?", "Bake bread at home?", "Bake  bread at home"],
                  "prompt_kind": ["harmful", "benign", "benign"]}).to_json(path, orient="records", lines=True)
    df, stats = run(IngestConfig(sources=(f"file:{path}",), max_harmful=10, max_benign=10))
    assert len(df) == 2 and stats["dropped_duplicate"] == 1
    assert split_of(df.prompt_id[0], IngestConfig()) in ("train", "val", "test")


def test_the_pool_holds_every_train_and_val_prompt_before_the_caps_and_no_test_one():
    from components.ingest import run_with_pool

    cfg = IngestConfig(sources=("harmbench", "redharness", "aplomb"), max_harmful=40, max_benign=20)
    df, pool, stats = run_with_pool(cfg)
    assert df.equals(run(cfg)[0])
    assert set(pool.split) == {"train", "val"} and len(pool) > (df.split != "test").sum()
    assert set(pool[pool.capped].prompt_id) == set(df[df.split != "test"].prompt_id)
    assert not set(pool.prompt_id) & set(df[df.split == "test"].prompt_id)
    assert stats["pool_harmful_train"] == ((pool.prompt_kind == "harmful") & (pool.split == "train")).sum()
