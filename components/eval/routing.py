"""Evaluation behind the prompt router: the ``<model>_routed`` rows.

The router (``components.route.router``, fitted by ``train_router`` on the base model's states of
the train prompts) decides once per evaluated input, on the base model, whether the adapter answers
it. A routed model's transcript row is then the model's own where the router routes the input and
base's elsewhere (``transcripts.routed``): no input is generated again. Utility NLL follows the
same choice per reference answer (its plain benign prompt's route).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from components.core.errors import UserError
from components.eval import metrics as eval_metrics
from components.eval import transcripts as tx
from components.route.router import PromptRouter, route
from components.lm import source as model_source

log = logging.getLogger("craft.evaluate")


def load(folder: Path | None, routed_models: tuple[str, ...], models: tuple[str, ...],
         model_cfg: model_source.ModelConfig, workspace: str = ".") -> PromptRouter | None:
    """The router in ``folder``, or None when no routed rows are asked for (no folder, no
    ``routed_models``, or no ``base`` to answer the inputs the router keeps from the adapter)."""
    if folder is None or not routed_models:
        return None
    if "base" not in models:
        log.warning("no <model>_routed rows: evaluate.models lacks base, which answers what the router keeps back")
        return None
    if not (Path(folder) / "router.json").is_file():
        raise UserError(f"{folder}: no prompt router there; run `dvc repro train_router`, or set "
                        "evaluate.routed_models: [] to evaluate without it.")
    router = PromptRouter.load(folder)
    fitted = router.info.get("model_fingerprint")
    current = model_source.resolve(model_cfg, workspace).fingerprint
    if fitted and fitted != current:
        raise UserError(f"{folder}: the router was fitted on base model {fitted}, but model.source is now {current}; "
                        "re-run `dvc repro train_router` (or set evaluate.routed_models: []).")
    return router


def decide(router: PromptRouter, lm, inputs: pd.DataFrame) -> pd.Series:
    """[len(inputs)] bool, aligned with ``inputs``: True where the adapter answers (``lm`` is base)."""
    routes, _ = route(router, lm.model, lm.tokenizer, list(inputs.input), lm.device)
    return pd.Series(routes, index=inputs.index, dtype=bool)


def shares(routes: pd.Series, inputs: pd.DataFrame) -> dict[str, float]:
    """Shares of plain harmful, plain benign and attack-wrapped inputs the router sends to the adapter."""
    plain = inputs.attack == "none"
    groups = {"routed_harmful": plain & (inputs.prompt_kind == "harmful"),
              "routed_benign": plain & (inputs.prompt_kind == "benign"), "routed_attacked": ~plain}
    return {k: float(routes[sel].mean()) if sel.any() else float("nan") for k, sel in groups.items()}


def add_rows(kept: dict[str, tuple[pd.DataFrame, list]], routes: pd.Series, inputs: pd.DataFrame,
             frames: list[pd.DataFrame], results: dict) -> None:
    """Append ``<model>_routed`` transcripts to ``frames`` and their metrics to ``results``.
    ``kept``: {name: (transcripts without the model column, reference_nlls)}, ``base`` among them."""
    base_t, base_nll = kept["base"]
    plain = inputs[inputs.attack == "none"]
    ref_route = dict(zip(plain.prompt_id, routes[plain.index]))
    for name, (t, nlls) in kept.items():
        if name == "base":
            continue
        r = tx.routed(base_t, t, routes)
        r.insert(0, "model", f"{name}_routed")
        frames.append(r)
        picked = [m if ref_route.get(m[0], False) else b for b, m in zip(base_nll, nlls)]
        results[f"{name}_routed"] = {**eval_metrics.rates(r), "utility_nll": tx.mean_nll(picked),
                                     **shares(routes, inputs)}
