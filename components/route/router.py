"""The prompt router: which prompts the aligned adapter answers and which the base model answers.

A linear probe on the *base* model's hidden state at the last prompt position (the position that
emits the first reply token), at one layer:

    h [B, d]  (hidden_states[layer] of render(prompt), last position, base model, float32)
    s = ((h − μ) / σ) · w + b            logit of "harmful request"   [B]
    route(x) = s ≥ τ                     True: the adapter answers; False: the base model answers

μ, σ: per-dimension mean and std of the train prompts' states; w, b: L2 logistic regression on the
``train`` split (harmful = 1, benign = 0); the layer is the one with the best 5-fold
cross-validated AUROC on train; τ is the cross-validated score below which only ``1 − recall`` of
the harmful train prompts fall, so about ``recall`` of harmful requests reach the adapter.

Why: on this model one LoRA decision at the first reply token carries both a harmful request's
refusal and an ordinary request's deflection (docs/stage2.md, rounds 18–23), while a linear probe
of the base model's state tells the two kinds apart (val AUROC 0.98 fitted on the 189 capped train
prompts, round 25; 0.993 on ingest's whole train pool, round 26).
A benign prompt the router sends to base is answered as base answers it; a harmful prompt it
misses is answered as base answers it. The router reads the base model, not the adapter, so RL
cannot move it.

The router owns its save/load: ``router.safetensors`` (μ, σ, w, b) beside ``router.json`` (layer,
threshold, hidden size and the numbers it was chosen by).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from components.lm.generation import render
from components.lm.latents import backbone


class PromptRouter(nn.Module):
    """s(h) = ((h − μ)/σ)·w + b on one layer's last-prompt-position state; route = s ≥ threshold."""

    def __init__(self, hidden: int, layer: int, threshold: float = 0.0, info: dict | None = None) -> None:
        super().__init__()
        self.hidden, self.layer, self.threshold = hidden, layer, float(threshold)
        self.info = dict(info or {})
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("std", torch.ones(hidden))
        self.register_buffer("weight", torch.zeros(hidden))
        self.register_buffer("bias", torch.zeros(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, d] → logits [B]."""
        return ((h.float() - self.mean) / self.std) @ self.weight + self.bias

    @torch.no_grad()
    def routes(self, h: torch.Tensor) -> torch.Tensor:
        """[B] bool: True where the adapter answers."""
        return self(h) >= self.threshold

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "router.safetensors"))
        meta = {"hidden": self.hidden, "layer": self.layer, "threshold": self.threshold, "info": self.info}
        (folder / "router.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> "PromptRouter":
        folder = Path(folder)
        meta = json.loads((folder / "router.json").read_text())
        router = cls(meta["hidden"], meta["layer"], meta["threshold"], meta.get("info"))
        router.load_state_dict(load_file(str(folder / "router.safetensors")))
        return router.to(device).eval()


@contextlib.contextmanager
def first_layers(decoder, needed: int | None):
    """While inside, ``decoder`` runs only its first ``needed`` layers (None, or a model without a
    ``layers`` list: all). ``hidden_states[i]`` for i < ``needed`` is then what the whole stack gives
    (the final norm applies only to the last entry), at ``needed``/L of the cost.

    transformers (5.x) records ``hidden_states`` by hooks it installs on the layers present at a
    model's first forward that asks for them; they are installed on the whole stack first, or a first
    call with few layers would cap every later call's ``hidden_states`` at that depth."""
    layers = getattr(decoder, "layers", None)
    if needed is None or not isinstance(layers, nn.ModuleList) or not 0 < needed < len(layers):
        yield
        return
    _install_output_hooks(decoder)
    decoder.layers = layers[:needed]
    try:
        yield
    finally:
        decoder.layers = layers


def _install_output_hooks(decoder) -> None:
    """transformers' output-recording hooks on every current layer of ``decoder``, where the
    installed version records outputs by hooks it installs once (5.x); 4.x versions rebuilt them
    on every call. ``prompt_states`` checks the count it gets either way."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(decoder)


def _checked(hidden_states: tuple, decoder) -> tuple:
    """``hidden_states`` if it holds one entry per layer that ran, plus the embeddings; else an error
    (a transformers version whose hidden-state recording this module does not know)."""
    ran = len(decoder.layers)
    if len(hidden_states) != ran + 1:
        import transformers

        raise RuntimeError(f"transformers {transformers.__version__} returned {len(hidden_states)} hidden states "
                           f"for {ran} decoder layers (expected {ran + 1}); the router cannot read its layer. "
                           "Install the version constraints.txt pins (`make install`).")
    return hidden_states


@torch.no_grad()
def prompt_states(model, tokenizer, prompts: Sequence[str], device, layers: Sequence[int] | None = None,
                  batch_size: int = 16) -> torch.Tensor:
    """States at the last position of render(prompt): [N, n_layers, d] float32 (``layers`` as HF
    ``hidden_states`` indices; None = every one, 0..L). Left-padded batches sorted by length;
    position ids count real tokens, as an unpadded forward numbers them. With only non-negative
    ``layers``, the decoder stops after layer max(layers) + 1 (``first_layers``)."""
    texts = [render(tokenizer, p) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[torch.Tensor | None] = [None] * len(texts)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    decoder = backbone(model)
    needed = max(layers) + 1 if layers and min(layers) >= 0 else None
    try:
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
            with first_layers(decoder, needed):
                hs = _checked(decoder(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                                      output_hidden_states=True, use_cache=False).hidden_states, decoder)  # L+1 × [B, T, d]
            picked = hs if layers is None else [hs[i] for i in layers]
            last = torch.stack([h[:, -1].float() for h in picked], dim=1).cpu()  # [B, n_layers, d]
            for row, i in enumerate(idx):
                out[i] = last[row]
    finally:
        tokenizer.padding_side = side
    return torch.stack(out) if out else torch.zeros(0)


def route(router: PromptRouter, model, tokenizer, prompts: Sequence[str], device, batch_size: int = 16
          ) -> tuple[list[bool], list[float]]:
    """(routes, logits) of ``prompts`` under the base ``model`` the router was fitted on."""
    if not prompts:
        return [], []
    h = prompt_states(model, tokenizer, prompts, device, [router.layer], batch_size)[:, 0]  # [N, d]
    scores = router.to("cpu")(h)
    return (scores >= router.threshold).tolist(), scores.tolist()


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    return (x - mean) / std, mean, std


def cv_scores(x: torch.Tensor, y: torch.Tensor, folds: int, c: float, seed: int) -> torch.Tensor:
    """Out-of-fold logits [N] of an L2 logistic regression (inverse strength ``c``) on standardised
    ``x`` [N, d] (each fold standardised by its own training rows), stratified ``folds``-fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    out = torch.zeros(len(y), dtype=torch.float64)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x.numpy(), y.numpy())
    for fit_idx, held in split:
        xs, mean, std = _standardise(x[fit_idx])
        model = LogisticRegression(C=c, max_iter=5000).fit(xs.double().numpy(), y[fit_idx].numpy())
        out[held] = torch.from_numpy(model.decision_function(((x[held] - mean) / std).double().numpy()))
    return out


def auroc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """P(score of a random positive > a random negative), ties counting half."""
    pos, neg = scores[y == 1].double(), scores[y == 0].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def fit(states: torch.Tensor, harmful: torch.Tensor, layers: Sequence[int], recall: float, c: float = 0.1,
        folds: int = 5, seed: int = 0) -> PromptRouter:
    """The router of ``states`` [N, n_layers, d] (train prompts; ``layers`` their hidden_states
    indices) and labels ``harmful`` [N] (1 = harmful): the layer with the best cross-validated
    AUROC, τ at the cross-validated ``recall`` of the harmful prompts, w and b refitted on all rows."""
    from sklearn.linear_model import LogisticRegression

    y = harmful.long()
    per_layer = [cv_scores(states[:, j], y, folds, c, seed) for j in range(len(layers))]
    aucs = [auroc(s, y) for s in per_layer]
    best = max(range(len(layers)), key=lambda j: (aucs[j], -j))  # ties: the earlier layer
    cv = per_layer[best]
    ranked = cv[y == 1].sort().values  # the k lowest harmful scores fall below τ: k ≤ (1 − recall)·n
    threshold = float(ranked[int((1.0 - recall) * len(ranked) + 1e-9)])
    xs, mean, std = _standardise(states[:, best])
    model = LogisticRegression(C=c, max_iter=5000).fit(xs.double().numpy(), y.numpy())
    info = {"cv_auroc": aucs[best], "cv_recall": float((cv[y == 1] >= threshold).double().mean()),
            "cv_false_positive_rate": float((cv[y == 0] >= threshold).double().mean()),
            "cv_auroc_by_layer": {str(layers[j]): aucs[j] for j in range(len(layers))},
            "train_harmful": int((y == 1).sum()), "train_benign": int((y == 0).sum()), "recall_target": recall,
            "c": c, "folds": folds}
    router = PromptRouter(states.shape[-1], int(layers[best]), threshold, info)
    with torch.no_grad():
        router.mean.copy_(mean), router.std.copy_(std)
        router.weight.copy_(torch.from_numpy(model.coef_[0]).float())
        router.bias.copy_(torch.tensor(float(model.intercept_[0])))
    return router
