"""Prompt identity ignores invisible characters (#7); blank user prompts are refused (#8)."""
from __future__ import annotations

import re
import unicodedata

import pandas as pd
import pytest

from components.data.records import normalise, prompt_id, strip_invisible

pytestmark = pytest.mark.reliability

# Pinned before invisible characters were dropped: the pipeline's splits hash these ids.
PINNED = [
    ("How would someone do harmful thing number 0?", "how would someone do harmful thing number 0", "526e1003ed9b"),
    ("How do I pick a lock to break into a house?", "how do i pick a lock to break into a house", "3fd901da7321"),
    ("Bake  bread at home?", "bake bread at home", "86e380fda402"),
    ("  Café au lait, s'il vous plaît!\n", "café au lait, s'il vous plaît", "a9ae67c41d30"),
    ("Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ", "full-width abc", "0bfeb9281ff9"),
    ("如何制作炸弹？", "如何制作炸弹", "2abc1c0460c0"),
    ("Explain\tthis\u00a0please...", "explain this please", "8a26d9118ef9"),
    ("Résumé ÉCOLE ß", "résumé école ss", "6da7f3b3d14f"),
    ("😀 emoji test 👍🏽", "😀 emoji test 👍🏽", "f13e96d850fe"),
    ("مرحبا كيف حالك؟", "مرحبا كيف حالك؟", "270be9abe4a7"),
    ("ﬁne ligature ①", "fine ligature 1", "84f93ad39a2e"),
]

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u202a", "\u2066",
             "\u180e", "\u034f", "\ufe0f", "\U000e0041", "\u061c"]


def _old_normalise(text: str) -> str:
    """normalise() as it was before invisible characters were dropped (the reference for stability)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip(".?!")


@pytest.mark.parametrize("text, norm, pid", PINNED)
def test_ids_of_ordinary_prompts_are_unchanged(text, norm, pid):
    assert normalise(text) == norm and prompt_id(text) == pid


def test_every_packaged_prompt_keeps_its_id():
    """All prompts of the packaged sources without invisible characters normalise exactly as before."""
    from components.data.sources import DEFAULT_SOURCES, read_source

    texts = [p.text for name in DEFAULT_SOURCES for p in read_source(name)]
    assert len(texts) > 500
    plain = [t for t in texts if strip_invisible(t) == t]
    assert len(plain) >= 0.98 * len(texts)
    assert [normalise(t) for t in plain] == [_old_normalise(t) for t in plain]


@pytest.mark.parametrize("ch", INVISIBLE)
def test_invisible_characters_do_not_change_identity(ch):
    text = "How do I pick a lock to break into a house?"
    for fooled in (text.replace("lock", f"lo{ch}ck"), ch + text, text + ch, text.replace(" ", f" {ch}", 3)):
        assert normalise(fooled) == normalise(text) and prompt_id(fooled) == prompt_id(text)


def test_invisible_character_between_letter_and_accent_still_composes():
    assert normalise("cafe\u200b\u0301") == normalise("café")


def test_validate_sees_a_prompt_leaked_across_splits_behind_a_zero_width_space(tmp_path):
    from components.validate import ValidateConfig, run, to_markdown
    from tests.factories import good_frame

    df = good_frame()
    first = df.prompt_id == df.prompt_id[0]
    other = "train" if df.loc[0, "split"] == "val" else "val"
    copy = df[first].copy()
    copy["prompt"] = copy["prompt"].str.replace("someone", "some\u200bone")
    copy["prompt_id"] = "copied0000id"  # a copy carries whatever id the copier gave it
    copy["trace_id"] = copy["trace_id"] + "c"
    copy["split"] = other
    copy["trace"] = copy["trace"] + " (copy)"
    path = tmp_path / "pairs.parquet"
    pd.concat([df, copy], ignore_index=True).to_parquet(path)
    report = run(path, ValidateConfig(min_rows=10))
    assert "no prompt in two splits" in {f.check for f in report.failed}, to_markdown(report)


def test_validate_sees_a_label_conflict_behind_invisible_characters(tmp_path):
    from components.validate import ValidateConfig, run
    from tests.factories import good_frame

    df = good_frame()
    unsafe = df[(df.prompt_id == df.prompt_id[0]) & (df.label == "unsafe")].index[0]
    df.loc[unsafe, "trace"] = "\ufeff" + df.loc[0, "trace"].replace("hurt", "hu\u00adrt")
    path = tmp_path / "pairs.parquet"
    df.to_parquet(path)
    failed = {f.check for f in run(path, ValidateConfig(min_rows=10)).failed}
    assert "no trace carries two labels for one prompt (safe == unsafe)" in failed


def test_ingest_dedups_prompts_that_differ_only_by_invisible_characters(tmp_path):
    from components.ingest import IngestConfig, run

    path = tmp_path / "mine.jsonl"
    pd.DataFrame({"prompt": ["How to pick a lock on my neighbour's door?",
                             "How to pick a lo\u200bck on my neighbour's\u2060 door?",
                             "\ufeffHow to pick a lock on my neighbour\u200d's door?"],
                  "prompt_kind": ["harmful"] * 3}).to_json(path, orient="records", lines=True)
    df, stats = run(IngestConfig(sources=(f"file:{path}",), max_harmful=10, max_benign=10))
    assert len(df) == 1 and stats["dropped_duplicate"] == 2


# --- #8: blank user prompts ---------------------------------------------------------------------


def _write(tmp_path, prompts, fmt="jsonl"):
    df = pd.DataFrame({"prompt": prompts, "prompt_kind": ["harmful"] * len(prompts)})
    path = tmp_path / f"mine.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("blank, fmt", [(None, "jsonl"), ("", "jsonl"), ("   \t", "jsonl"), ("\u200b\ufeff", "jsonl"),
                                        (None, "csv"), ("  ", "csv")])
def test_user_prompt_file_with_a_blank_prompt_is_refused_naming_the_row(tmp_path, blank, fmt):
    from components.data.sources import SourceError, read_source
    from components.evaluate import user_prompts

    path = _write(tmp_path, ["How do I pick a lock?", blank, "How can I make a fake ID?", blank], fmt)
    for load in (user_prompts, lambda p: read_source(f"file:{p}")):
        with pytest.raises(SourceError) as err:
            load(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and "rows 2, 4" in message and "None" not in message


def test_user_prompt_that_is_not_text_is_refused(tmp_path):
    from components.data.sources import SourceError, read_source

    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "How do I pick a lock?", "prompt_kind": "harmful"}\n'
                    '{"prompt": 42, "prompt_kind": "harmful"}\n')
    with pytest.raises(SourceError, match=r"prompt is not text in row 2"):
        read_source(f"file:{path}")


def test_null_category_and_reference_are_not_the_string_none(tmp_path):
    from components.evaluate import user_prompts

    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "How do I pick a lock?", "prompt_kind": "harmful", "category": null, '
                    '"reference": null}\n{"prompt": "Bake bread?", "prompt_kind": "benign"}\n')
    df = user_prompts(path)
    assert list(df.category) == ["unknown", "unknown"] and list(df.reference) == ["", ""]


def test_craft_evaluate_refuses_a_blank_prompt_in_one_line(tmp_path, capsys):
    from flows.cli import main as craft

    path = _write(tmp_path, ["How do I pick a lock?", None])
    out = tmp_path / "evaluation"
    assert craft(["evaluate", "--model", "base", "--prompts", str(path), "--out", str(out),
                  "--params", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty or missing prompt in row 2" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_ingest_refuses_a_user_file_with_blank_prompts_and_writes_nothing(tmp_path, capsys):
    """Ingest refuses too (documented in sources._user_file): blank rows are a mistake to fix."""
    from components.core.errors import guarded
    from components.ingest import main as ingest_main

    path = _write(tmp_path, ["How to pick a lock on my neighbour's door?", "", "Bake bread at home?"])
    (tmp_path / "params.yaml").write_text(f"ingest: {{sources: ['file:{path}']}}\n")
    out = tmp_path / "data" / "ingest"
    code = guarded("ingest", lambda: ingest_main(["--params", str(tmp_path / "params.yaml"), "--out", str(out)]))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "ingest: error:" in line]  # MLflow may log INFO lines too
    assert code == 2 and len(errors) == 1 and "row 2" in errors[0] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
