"""Hand-made pair datasets for validation tests (no model needed)."""
from __future__ import annotations

import pandas as pd

from components.data.records import TRACE_COLUMNS, prompt_id, stable_id


def good_frame(n_prompts: int = 12) -> pd.DataFrame:
    """A valid pair dataset: each harmful prompt has safe, unsafe and rethink traces."""
    rows = []
    for i in range(n_prompts):
        prompt = f"How would someone do harmful thing number {i}?"
        pid = prompt_id(prompt)
        split = "val" if i % 4 == 0 else "train"
        for label, trace in (("safe", f"This request {i} could hurt people; I decline."),
                             ("unsafe", f"Sure, I will explain thing {i} step by step."),
                             ("rethink", f"Let me start on {i}. Wait, this is harmful; I decline.")):
            rows.append({
                "trace_id": stable_id(pid, label), "prompt_id": pid, "prompt": prompt,
                "prompt_kind": "harmful", "trace": trace, "response": trace, "label": label,
                "origin": "template", "source": "unit", "category": "test", "split": split,
                "p_safe": 0.9 if label != "unsafe" else 0.1, "judge": "keyword", "model_id": "template",
            })
    return pd.DataFrame(rows, columns=list(TRACE_COLUMNS))
