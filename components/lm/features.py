"""The activation cache on disk: safetensors shards written by ``extract``, read by ``train_head``.

Layout of an extract folder:
- ``shards/shard-NNNNN.safetensors`` with tensors ``h`` and ``h_aug``, each [n, n_layers, d]
  (``h_aug`` is the InfoNCE positive view of the same row);
- ``rows.parquet``: one row per feature vector, in shard order (trace id, label, split, …);
- ``manifest.json``: model id and fingerprint, the LatentSpec, storage dtype, hidden size, shards.
Only safetensors and parquet are read back: no pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from components.core.errors import UserError
from components.core.io import atomic_path, read_table
from components.lm.latents import LatentSpec


class ShardWriter:
    """Buffers pooled states and writes a shard every ``shard_rows`` rows (bounded memory)."""

    def __init__(self, folder: Path, shard_rows: int, dtype: torch.dtype) -> None:
        self.dir = folder / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("shard-*.safetensors"):
            old.unlink()
        self.shard_rows, self.dtype = shard_rows, dtype
        self.shards: list[str] = []
        self._h: list[torch.Tensor] = []
        self._aug: list[torch.Tensor] = []

    def add(self, h: torch.Tensor, h_aug: torch.Tensor) -> None:
        """h, h_aug: [b, n_layers, d] on any device."""
        self._h.append(h.cpu())
        self._aug.append(h_aug.cpu())
        if sum(len(b) for b in self._h) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._h:
            return
        path = self.dir / f"shard-{len(self.shards):05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"h": torch.cat(self._h).to(self.dtype).contiguous(),
                       "h_aug": torch.cat(self._aug).to(self.dtype).contiguous()}, str(tmp))
        self.shards.append(f"shards/{path.name}")
        self._h.clear()
        self._aug.clear()


@dataclass
class Features:
    """Extracted features loaded back: h, h_aug [N, n_layers, d] float32, rows, manifest."""

    h: torch.Tensor
    h_aug: torch.Tensor
    rows: pd.DataFrame
    manifest: dict

    @property
    def spec(self) -> LatentSpec:
        return LatentSpec.from_dict(self.manifest["spec"])


def load(folder: str | Path) -> Features:
    """Read an extract folder (safetensors only; no pickle)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [load_file(str(folder / s)) for s in manifest["shards"]]
    h = torch.cat([p["h"] for p in parts]).float()
    h_aug = torch.cat([p["h_aug"] for p in parts]).float()
    rows = read_table(folder / "rows.parquet")
    if len(rows) != len(h):
        raise UserError(f"{folder}: {len(rows)} rows but {len(h)} feature vectors; re-run extract.")
    return Features(h, h_aug, rows, manifest)
