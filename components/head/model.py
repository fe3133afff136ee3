"""The CRAFT safety head: the one definition used by head training, RL rewards, evaluation, audit.

    h [B, d]  --f-->  z [B, 512] (unit norm)  --g-->  logits [B, 3]
    f = Linear(d→1024) → GELU → Linear(1024→512) → L2-normalise     (paper §4.1 projection head)
    g = Linear(512→3)                                               (safety classifier)
    μ [3, 512]: class prototypes (unit vectors), EMA-updated, order = LABELS (safe, unsafe, rethink)

The head owns its save/load: ``head.safetensors`` (weights + prototypes) beside ``head.json``
(constructor arguments and the ``LatentSpec`` its inputs were extracted with), so every user of a
saved head encodes text exactly as training did. Several layers are concatenated: d = n_layers · hidden.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from components.lm.latents import LatentSpec
from components.data.records import LABELS

SAFE, UNSAFE, RETHINK = 0, 1, 2
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}


class SafetyHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 512,
                 spec: LatentSpec | None = None) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.spec = spec or LatentSpec()
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        self.classifier = nn.Linear(out_dim, len(LABELS))
        self.register_buffer("prototypes", F.normalize(torch.randn(len(LABELS), out_dim), dim=-1))
        # Standardisation of the raw activations (departure from the paper: LM hidden states have
        # a few huge outlier dimensions that otherwise dominate the first Linear).
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    @staticmethod
    def flatten(h: torch.Tensor) -> torch.Tensor:
        """[B, n_layers, d] → [B, n_layers·d]; [B, d] passes through."""
        return h.flatten(1) if h.dim() == 3 else h

    @torch.no_grad()
    def set_input_stats(self, h: torch.Tensor) -> None:
        """Per-dimension mean and std of the training activations [N, in_dim]."""
        flat = self.flatten(h)
        self.input_mean.copy_(flat.mean(0))
        self.input_std.copy_(flat.std(0).clamp(min=1e-4))

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """z = f((h − mean) / std), unit norm [B, out_dim]."""
        x = (self.flatten(h).to(self.input_mean.dtype) - self.input_mean) / self.input_std
        return F.normalize(self.proj(x), dim=-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(h)
        return z, self.classifier(z)

    def cosines(self, z: torch.Tensor) -> torch.Tensor:
        """cos(z, μ_c) for each class [B, 3] (both unit norm, so a dot product)."""
        return z @ self.prototypes.T

    @torch.no_grad()
    def update_prototypes(self, z: torch.Tensor, labels: torch.Tensor, momentum: float) -> None:
        """μ_c ← normalise(m·μ_c + (1−m)·mean(z | label = c)) for classes present in the batch."""
        for c in range(len(LABELS)):
            sel = labels == c
            if sel.any():
                mean = z[sel].mean(0)
                self.prototypes[c] = F.normalize(momentum * self.prototypes[c] + (1 - momentum) * mean, dim=-1)

    @torch.no_grad()
    def init_prototypes(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """μ_c = normalise(mean z of class c): a data-based start instead of random directions."""
        for c in range(len(LABELS)):
            if (labels == c).any():
                self.prototypes[c] = F.normalize(z[labels == c].mean(0), dim=-1)

    @torch.no_grad()
    def score(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent safety scores of pooled states h: cosines, p_safe and R_lat, each [B].

        R_lat = cos(z, μ_safe) − cos(z, μ_unsafe) + 0.5·cos(z, μ_rethink)   (paper §4.2)
        p_safe = softmax(g(z))[safe] (rethink counts as safe: it ends refusing).
        """
        z, logits = self(h)
        cos = self.cosines(z)
        probs = logits.softmax(-1)
        return {"cos_safe": cos[:, SAFE], "cos_unsafe": cos[:, UNSAFE], "cos_rethink": cos[:, RETHINK],
                "p_safe": probs[:, SAFE] + probs[:, RETHINK],
                "r_lat": cos[:, SAFE] - cos[:, UNSAFE] + 0.5 * cos[:, RETHINK]}

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "hidden_dim": self.hidden_dim, "out_dim": self.out_dim,
                "spec": asdict(self.spec), "labels": list(LABELS)}

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "head.safetensors"))
        (folder / "head.json").write_text(json.dumps({**self.config(), **(extra or {})}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "SafetyHead":
        folder = Path(folder)
        cfg = json.loads((folder / "head.json").read_text())
        if cfg.get("labels", list(LABELS)) != list(LABELS):
            raise ValueError(f"{folder}: head labels {cfg['labels']} differ from {list(LABELS)}.")
        s = cfg["spec"]
        spec = LatentSpec.from_dict(s)
        head = cls(cfg["in_dim"], cfg["hidden_dim"], cfg["out_dim"], spec)
        head.load_state_dict(load_file(str(folder / "head.safetensors")))
        return head.to(device).eval()
