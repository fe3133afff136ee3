"""Polyak average of the LoRA weights, read at selection (``train_rl.ema_decay``; 0 = off).

Why (docs/stage2.md, round 20): a run's val points swing between selection points five steps apart
(round 19c, seed 1: over-refusal 15%, 58%, 8% at steps 4, 9, 14), so which point wins is partly
luck, and the winner's val score overstates what it does on test (the committed run: 4% of val
benign prompts refused, 12.5% of test ones). Averaging the iterates damps such swings without
changing what RL optimises (Polyak & Juditsky 1992; for RLHF policies, WARP, Ramé et al. 2024):
rollouts, rewards, the KL and the updates all use the live weights θ; selection, the kept best and
the stage's output use the average θ̄.

After RL step s, for every trainable (LoRA A and B) tensor:

    θ̄_s = d·θ̄_{s−1} + (1 − d)·θ_s,      θ̄ before step 0 = θ there (after the gate)

with d = ``ema_decay``: step s − j weighs (1 − d)·d^j, an average over about 1/(1 − d) steps
(d = 0.8: five, one selection interval). A and B are averaged apart, which is not the average of
the products B·A; for weights that move little within the window the two agree to first order.
The average is kept in float32 on the weights' device and saved with each checkpoint, so a resumed
run continues it bit for bit.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from components.rl.checkpoint import trainable


class WeightAverage:
    """θ̄ of ``model``'s trainable parameters; ``state_dict`` / ``load_state_dict`` for checkpoints."""

    def __init__(self, model, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay {decay!r}: use a value in (0, 1)")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model) -> None:
        """θ̄ = θ: the average starts at the weights RL starts from."""
        self.shadow = {k: p.detach().float().clone() for k, p in trainable(model).items()}

    @torch.no_grad()
    def update(self, model) -> None:
        """θ̄ ← d·θ̄ + (1 − d)·θ, after an RL step."""
        for k, p in trainable(model).items():
            self.shadow[k].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        """Inside: ``model`` holds θ̄. After, even on an error: the live θ again, exactly."""
        params = trainable(model)
        live = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(live[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"the checkpoint's weight average lacks {missing[:3]}: it is of another adapter")
        for k, v in self.shadow.items():
            v.copy_(state[k])


def maybe(model, decay: float) -> WeightAverage | None:
    """A WeightAverage of ``model`` for ``decay`` > 0, else None (selection reads the live weights)."""
    return WeightAverage(model, decay) if decay > 0 else None


def applied(average: WeightAverage | None, model):
    """``average.applied(model)``, or a no-op context without an average."""
    return average.applied(model) if average is not None else contextlib.nullcontext()
