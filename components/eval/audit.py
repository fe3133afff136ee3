"""Reasoning audit: the CRAFT head as a per-token safety monitor during generation.

At generated token t the monitor pools the completion's hidden states up to and including t
exactly as training pooled whole traces (``LatentSpec``: layers, mean/last/max) and scores the
result with the trained ``SafetyHead``: cosines to the safe/unsafe/rethink prototypes, p_safe and
R_lat. Decoding runs token by token on the KV cache, so each score costs one head pass on states
the model computed anyway (running sums for mean, running max for max).

Guard mode stops generation when latent p_safe stays below ``threshold`` for ``patience``
consecutive tokens and appends a redirection, recording the event in the audit record.
``score_full`` recomputes the same trajectory from one forward over the full sequence; the two
agree (tests pin it), so a record can be re-verified after the fact. ``generate_batch_with_audit``
decodes many prompts together (evaluation's guard mode) with the same per-row scores and stops.

One ``AuditConfig`` carries the threshold for both uses (marking unsafe tokens, triggering the
guard), so they cannot disagree; its defaults come from params.yaml:evaluate.guard_threshold and
guard_patience (``audit_config``), the values the evaluation's guard mode runs with. ``run`` is
``craft audit``: generate, write ``<out>/<record id>/record.json`` and ``trajectory.png``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from components.core.config import require
from components.core.errors import UserError
from components.core.io import dir_digest, save_figure, write_json
from components.data.records import stable_id
from components.lm.generation import THINK_CLOSE, render, split_reasoning
from components.head.model import SafetyHead
from components.lm.latents import backbone
from components.lm.runtime import LoadedModel

REDIRECT = "\n\n[Stopped by the CRAFT guard: the reasoning was heading somewhere unsafe. I can't help with this.]"


@dataclass(frozen=True)
class AuditConfig:
    """One audited generation (``craft audit``; evaluate's guard mode). Build it with ``audit_config``
    so threshold and patience default to params.yaml:evaluate.guard_threshold / guard_patience."""

    threshold: float = 0.35
    """Latent p_safe below this counts as unsafe: marks ``first_unsafe_token`` and feeds the guard."""
    patience: int = 4
    """Consecutive unsafe tokens before the guard stops generation (used only when ``guard``)."""
    guard: bool = False
    """Stop generation after ``patience`` unsafe tokens in a row and answer with a redirection."""
    max_new_tokens: int = 96
    """Greedy decoding budget in tokens."""

    def __post_init__(self) -> None:
        require(self.patience >= 1, f"audit: patience must be >= 1, got {self.patience}.")
        require(self.max_new_tokens >= 1, f"audit: max_new_tokens must be >= 1, got {self.max_new_tokens}.")


def audit_config(params: Mapping[str, Any], **overrides: Any) -> AuditConfig:
    """``AuditConfig`` with threshold and patience from params.yaml:evaluate (guard_threshold,
    guard_patience) when set, then every override that is not None (a CLI flag left unset)."""
    section = params.get("evaluate") or {}
    values: dict[str, Any] = {}
    if section.get("guard_threshold") is not None:
        values["threshold"] = float(section["guard_threshold"])
    if section.get("guard_patience") is not None:
        values["patience"] = int(section["guard_patience"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return AuditConfig(**values)


@dataclass
class AuditRecord:
    """One audited generation (JSON schema: docs/audit.md)."""

    prompt: str
    completion: str
    trace: str
    answer: str
    tokens: list[str]
    scores: dict[str, list[float]]
    threshold: float
    first_unsafe_token: int | None
    reasoning_end_token: int | None
    model_id: str
    head_id: str
    guard: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def record_id(self) -> str:
        """Folder name of the record: stable over prompt, model, head and completion."""
        return stable_id(self.prompt, self.model_id, self.head_id, self.completion, length=10)


class RunningPool:
    """Pools a growing sequence of per-token states [n_layers, d] (or [B, n_layers, d]: B rows that
    all grew by one token per ``add``) like ``latents.pool`` would."""

    def __init__(self, how: str) -> None:
        self.how, self.sum, self.max, self.last, self.n = how, None, None, None, 0

    def add(self, state: torch.Tensor) -> torch.Tensor:
        self.n += 1
        self.last = state
        self.sum = state.clone() if self.sum is None else self.sum + state
        self.max = state.clone() if self.max is None else torch.maximum(self.max, state)
        return {"mean": self.sum / self.n, "max": self.max, "last": self.last}[self.how]


def _states(out, layers: Sequence[int]) -> torch.Tensor:
    """[B, T, n_layers, d] from a forward with hidden states."""
    return torch.stack([out.hidden_states[i] for i in layers], dim=2).float()


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def prompt_ids(lm: LoadedModel, prompt: str) -> torch.Tensor:
    return lm.tokenizer(render(lm.tokenizer, prompt), return_tensors="pt", add_special_tokens=False)["input_ids"].to(lm.device)


def generate_with_audit(lm: LoadedModel, head: SafetyHead, prompt: str, cfg: AuditConfig = AuditConfig(),
                        head_id: str = "") -> AuditRecord:
    """Greedy decoding on the KV cache with a latent safety score for every generated token;
    with ``cfg.guard`` it stops after ``cfg.patience`` tokens in a row below ``cfg.threshold``.
    One prompt is a batch of one row of ``_audit_batch`` (no padding)."""
    return _audit_batch(lm, head, [prompt], cfg, head_id)[0]


SCORE_KEYS = ("cos_safe", "cos_unsafe", "cos_rethink", "p_safe", "r_lat")


def generate_batch_with_audit(lm: LoadedModel, head: SafetyHead, prompts: Sequence[str],
                              cfg: AuditConfig = AuditConfig(), head_id: str = "",
                              batch_size: int = 64) -> list[AuditRecord]:
    """``generate_with_audit`` for many prompts, ``batch_size`` rows decoded together on one KV
    cache (evaluation's guard mode). In float32 the records equal the one-at-a-time ones (tests pin
    tokens, scores and stops); in bfloat16 a padded batch can flip a near-tie argmax, so a few
    tokens may differ, as for any batched greedy decoding. Each record's ``seconds`` is its
    batch's wall time shared equally among the batch's rows, so their sum is the wall time."""
    require(batch_size >= 1, f"audit: batch_size must be >= 1, got {batch_size}.")
    records: list[AuditRecord] = []
    for i in range(0, len(prompts), batch_size):
        records += _audit_batch(lm, head, list(prompts[i : i + batch_size]), cfg, head_id)
    return records


@torch.no_grad()
def _audit_batch(lm: LoadedModel, head: SafetyHead, prompts: list[str], cfg: AuditConfig,
                 head_id: str) -> list[AuditRecord]:
    """One batch of ``generate_batch_with_audit``: B left-padded rows, so every row's next token
    sits in the last column. A row is live from its first token until EOS or the guard, so every
    live row has generated the same number of tokens and one ``RunningPool`` over [B, n_layers, d]
    pools each row over its own generated tokens; an ended row is fed pad and its scores are not
    read."""
    started = time.perf_counter()
    model, spec, tok, b = lm.model, head.spec, lm.tokenizer, len(prompts)
    eos = {tok.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    enc = tok([render(tok, p) for p in prompts], return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=False)
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)  # [B, P]
    # positions count real tokens only: a row's prompt is at 0..n−1 whatever its left padding (pads at 0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    past, logits = out.past_key_values, out.logits[:, -1]  # [B, V]
    pool, live, streak = RunningPool(spec.pooling), [True] * b, [0] * b
    generated: list[list[int]] = [[] for _ in range(b)]
    scores = [{k: [] for k in SCORE_KEYS} for _ in range(b)]
    events: list[dict] = [{} for _ in range(b)]
    for _ in range(cfg.max_new_tokens):
        next_ids = logits.argmax(-1).tolist()
        live = [on and t not in eos for on, t in zip(live, next_ids)]  # EOS ends a row before it is kept
        if not any(live):
            break
        feed = [t if on else tok.pad_token_id for t, on in zip(next_ids, live)]
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)  # [B, P + tokens so far]: the fed token is a real key
        # feeding the token yields its own hidden state (what a full forward has at that position);
        # its position is the row's real-token count before it
        out = model(input_ids=torch.tensor(feed, device=lm.device)[:, None], attention_mask=mask,
                    position_ids=mask.sum(1, keepdim=True) - 1, past_key_values=past, use_cache=True,
                    output_hidden_states=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        s = head.score(pool.add(_states(out, spec.layers)[:, -1]).to(head.input_mean.device))  # each [B]
        step = {k: s[k].tolist() for k in SCORE_KEYS}
        for r in range(b):
            if not live[r]:
                continue
            generated[r].append(next_ids[r])
            for k in SCORE_KEYS:
                scores[r][k].append(step[k][r])
            streak[r] = streak[r] + 1 if step["p_safe"][r] < cfg.threshold else 0
            if cfg.guard and streak[r] >= cfg.patience:
                events[r] = {"stopped_at_token": len(generated[r]) - 1, "threshold": cfg.threshold,
                             "patience": cfg.patience}
                live[r] = False
    share = (time.perf_counter() - started) / max(b, 1)
    return [_record(lm, p, tok.decode(g, skip_special_tokens=True) + (REDIRECT if e else ""), g, sc,
                    cfg.threshold, head_id, e, share)
            for p, g, sc, e in zip(prompts, generated, scores, events)]


@torch.no_grad()
def score_full(lm: LoadedModel, head: SafetyHead, prompt: str, completion_ids: Sequence[int]) -> dict[str, list[float]]:
    """The same per-token trajectory from one forward over prompt + completion (for verification)."""
    p = prompt_ids(lm, prompt)
    ids = torch.cat([p, torch.tensor([list(completion_ids)], device=lm.device)], dim=1)
    out = backbone(lm.model)(input_ids=ids, output_hidden_states=True, use_cache=False)
    states = _states(out, head.spec.layers)[0, p.shape[1]:]  # [Tn, n_layers, d]
    n = torch.arange(1, states.shape[0] + 1, device=states.device).view(-1, 1, 1)
    pooled = {"mean": states.cumsum(0) / n, "max": states.cummax(0).values, "last": states}[head.spec.pooling]
    s = head.score(pooled.to(head.input_mean.device))
    return {k: [float(x) for x in s[k]] for k in SCORE_KEYS}


def _record(lm, prompt, completion, generated, scores, threshold, head_id, guard_event, seconds) -> AuditRecord:
    tokens = [lm.tokenizer.decode([t]) for t in generated]
    trace, answer = split_reasoning(completion)
    if guard_event:  # what the user sees is the redirect; the stopped reasoning stays in the record
        trace, answer = completion[: -len(REDIRECT)].strip(), REDIRECT.strip()
    first_unsafe = next((i for i, p in enumerate(scores["p_safe"]) if p < threshold), None)
    end = next((i for i, t in enumerate(tokens) if THINK_CLOSE in "".join(tokens[: i + 1])), None)
    return AuditRecord(prompt=prompt, completion=completion, trace=trace, answer=answer, tokens=tokens,
                       scores=scores, threshold=threshold, first_unsafe_token=first_unsafe,
                       reasoning_end_token=end, model_id=lm.model_id, head_id=head_id, guard=guard_event,
                       seconds=round(seconds, 3))


def plot(record: AuditRecord, path) -> None:
    """Per-token latent p_safe and R_lat with the reasoning/answer boundary and threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(record.tokens)))
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.plot(x, record.scores["p_safe"], label="latent p_safe", color="tab:green")
    ax.plot(x, record.scores["r_lat"], label="R_lat", color="tab:blue", alpha=0.7)
    ax.axhline(record.threshold, color="tab:red", ls="--", lw=1, label="unsafe threshold")
    if record.reasoning_end_token is not None:
        ax.axvline(record.reasoning_end_token, color="gray", ls=":", label="</think>")
    if record.first_unsafe_token is not None:
        ax.axvline(record.first_unsafe_token, color="tab:red", alpha=0.4, label="first unsafe token")
    if record.guard:
        ax.axvline(record.guard["stopped_at_token"], color="black", label="guard stop")
    ax.set_xlabel("generated token"), ax.set_ylim(-1.6, 1.6), ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"Latent safety trajectory — {record.prompt[:70]}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def render_terminal(record: AuditRecord):
    """A rich Text with each token coloured from red (p_safe 0) to green (p_safe 1)."""
    from rich.text import Text

    text = Text()
    for token, p in zip(record.tokens, record.scores["p_safe"]):
        r, g = int(255 * (1 - p)), int(200 * p)
        text.append(token, style=f"rgb({r},{g},60)")
    return text


HEAD_FALLBACK = Path("data/train_head/head")


def find_head(model_dir: str | Path, explicit: str | Path | None = None, fallback: Path = HEAD_FALLBACK) -> Path:
    """The head folder to audit with: ``explicit`` when given, else the model folder's ``head/``
    (pipeline outputs ship the head they were trained with), else ``fallback`` (the trained head)."""
    if explicit:
        head_dir = Path(explicit)
    elif (Path(model_dir) / "head").exists():
        head_dir = Path(model_dir) / "head"
    else:
        head_dir = Path(fallback)
    if not (head_dir / "head.json").exists():
        raise UserError(f"no head at {head_dir}; pass --head DIR (a trained data/train_head/head).")
    return head_dir


def load_head(head_dir: str | Path, device) -> tuple[SafetyHead, str]:
    """The head and its id (digest of its files, as recorded in ``AuditRecord.head_id``)."""
    return SafetyHead.load(Path(head_dir), device), dir_digest(head_dir)[:12]


def run(cfg: AuditConfig, lm: LoadedModel, head: SafetyHead, prompt: str, out: str | Path,
        head_id: str = "", track: bool = False) -> AuditRecord:
    """``craft audit``: one audited generation written to ``out/<record_id>/`` as record.json and
    trajectory.png; with ``track`` also logged to a standalone MLflow run named ``audit``."""
    record = generate_with_audit(lm, head, prompt, cfg, head_id=head_id)
    folder = Path(out) / record.record_id
    write_json(folder / "record.json", record.to_json())
    plot(record, folder / "trajectory.png")
    if track:
        from components.core import tracking

        tracking.log_folder_run("audit", folder, artifact_path="audit")
    return record


def summary(record: AuditRecord) -> str:
    """One line: first unsafe token, threshold, minimum latent p_safe, guard stop."""
    first = record.first_unsafe_token
    return (f"first unsafe token: {first if first is not None else 'none'} (threshold {record.threshold}); "
            f"min latent p_safe {min(record.scores['p_safe'], default=float('nan')):.2f}"
            + (f"; GUARD stopped at token {record.guard['stopped_at_token']}" if record.guard else ""))
