"""The registered model: an MLflow pyfunc that generates and scores its own reasoning.

Artifacts: ``model/`` (a pipeline output folder: ``model.json`` naming the base model by source
and fingerprint, the LoRA ``adapter/``, the CRAFT ``head/``), ``model_config.json``,
``serving.json`` (``ServeDefaults``), ``model_card.md`` and, for a model registered behind the
prompt router (``promote.routed``, the default), ``router/`` (``components.route.router``): each prompt the
router keeps from the adapter is then answered by the base model, as evaluation's
``<model>_routed`` rows were measured. The base weights are a *reference*,
not a copy: ``smollm2`` resolves from its package (a pip requirement of the model); a local or hub
base must be reachable where the model is loaded.

``predict`` takes a DataFrame with a ``prompt`` column (or a list of strings) and returns one row
per prompt with ``OUTPUT_COLUMNS``: completion, trace, response, the head's latent ``p_safe`` and
``r_lat`` of what the model wrote, ``guarded`` (the guard replaced the response) and ``adapter``
(the adapter answered: always, unless the router sent the prompt to the base model). Per-request
params (the signature's ``ParamSchema``; MLflow checks their types and fills in defaults first):

- ``max_new_tokens`` (int ≥ 1): the decoding budget;
- ``temperature`` (float ≥ 0): 0 is greedy, as evaluated;
- ``guard`` (bool): decode under the latent guard of ``craft audit --guard``
  (``components.eval.audit``): once latent p_safe stays below the threshold for ``patience``
  tokens, generation stops and the response becomes the guard's refusal. The guard decodes
  greedily, one prompt at a time, so ``guard`` with ``temperature > 0`` is refused (HTTP 400).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from components.core.config import require
from components.eval.audit import REDIRECT, AuditConfig, audit_config, generate_with_audit

OUTPUT_COLUMNS = {"prompt": "string", "completion": "string", "trace": "string", "response": "string",
                  "latent_p_safe": "double", "latent_r_lat": "double", "guarded": "boolean", "adapter": "boolean"}
"""``predict``'s columns and their MLflow types, in order (the signature's output schema)."""
PARAMS = ("max_new_tokens", "temperature", "guard")
BATCH_SIZE = 16
EXAMPLE_PROMPT = "How do I bake sourdough bread at home?"


@dataclass(frozen=True)
class ServeDefaults:
    """What a request gets for a param it leaves out, and the guard's settings. Registration
    records the evaluation's own decoding budget (data/evaluate/eval_set.json ``protocol``) and
    params.yaml:evaluate's guard settings, so a default request decodes as the model card's numbers
    were measured."""

    max_new_tokens: int = 48
    """Default ``max_new_tokens`` (params.yaml:evaluate.max_new_tokens)."""
    temperature: float = 0.0
    """Default ``temperature``; 0 is greedy, how the evaluation decodes."""
    guard: bool = False
    """Default ``guard``: off, so a response is the model's own unless a request asks for the guard."""
    guard_threshold: float = AuditConfig.threshold
    """Latent p_safe below this counts as an unsafe token (params.yaml:evaluate.guard_threshold)."""
    guard_patience: int = AuditConfig.patience
    """Unsafe tokens in a row before the guard stops (params.yaml:evaluate.guard_patience)."""

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, f"serving: max_new_tokens={self.max_new_tokens!r}: use 1 or more, e.g. 48.")
        require(self.temperature >= 0, f"serving: temperature={self.temperature!r}: use 0 (greedy) or more.")
        require(not (self.guard and self.temperature > 0),
                "serving: guard=true decodes greedily: set temperature to 0 or guard to false.")
        require(0 <= self.guard_threshold <= 1,
                f"serving: guard_threshold={self.guard_threshold!r}: use a p_safe in [0, 1] (evaluate.guard_threshold).")
        require(self.guard_patience >= 1,
                f"serving: guard_patience={self.guard_patience!r}: use 1 or more (evaluate.guard_patience).")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def defaults_for(eval_set: dict, params: dict) -> ServeDefaults:
    """``ServeDefaults`` as the model was evaluated: the budget data/evaluate/eval_set.json records
    (else params.yaml:evaluate.max_new_tokens) and the guard settings ``craft audit`` reads."""
    guard = audit_config(params)
    budget = (eval_set.get("protocol") or {}).get("max_new_tokens") or (params.get("evaluate") or {}).get("max_new_tokens")
    return ServeDefaults(max_new_tokens=int(budget or ServeDefaults.max_new_tokens), guard_threshold=guard.threshold,
                         guard_patience=guard.patience)


def signature(defaults: ServeDefaults = ServeDefaults()):
    """The pyfunc's ``ModelSignature``: a ``prompt`` string column in, ``OUTPUT_COLUMNS`` out, and
    the three request params with the registered defaults."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_new_tokens", "long", defaults.max_new_tokens),
                          ParamSpec("temperature", "double", float(defaults.temperature)),
                          ParamSpec("guard", "boolean", defaults.guard)])
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                          outputs=Schema([ColSpec(t, name) for name, t in OUTPUT_COLUMNS.items()]), params=params)


def input_example() -> tuple[pd.DataFrame, dict]:
    """(data, params) logged with the model: MLflow runs it once at logging to check the model
    serves (a short budget keeps that cheap) and shows it as ``serving_input_example.json``."""
    return pd.DataFrame({"prompt": [EXAMPLE_PROMPT]}), {"max_new_tokens": 8, "temperature": 0.0, "guard": True}


def _bad_request(message: str) -> Exception:
    # MLflow's scoring server answers an MlflowException with its own status (400 here) and
    # message; any other exception becomes a generic "unexpected error" with a stack trace.
    return MlflowException.invalid_parameter_value(message)


def request_params(params: dict | None, defaults: ServeDefaults) -> ServeDefaults:
    """A request's params over the registered defaults (params left out or None keep them)."""
    given = {k: v for k, v in (params or {}).items() if k in PARAMS and v is not None}
    try:
        values = {"max_new_tokens": int(given.get("max_new_tokens", defaults.max_new_tokens)),
                  "temperature": float(given.get("temperature", defaults.temperature)),
                  "guard": bool(given.get("guard", defaults.guard))}
    except (TypeError, ValueError) as exc:
        raise _bad_request(f"params {given}: {exc}; max_new_tokens is an int, temperature a float, guard a bool.")
    problems = [f"max_new_tokens={values['max_new_tokens']}: use 1 or more"] if values["max_new_tokens"] < 1 else []
    if values["temperature"] < 0:
        problems.append(f"temperature={values['temperature']}: use 0 (greedy) or more")
    if values["guard"] and values["temperature"] > 0:
        problems.append("guard=true decodes greedily, as it was evaluated: send temperature 0 with it, "
                        "or guard=false to sample")
    if problems:
        raise _bad_request("; ".join(problems) + ".")
    return ServeDefaults(**{**asdict(defaults), **values})


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise _bad_request(f"the input has columns {list(model_input.columns)}: send a 'prompt' column.")
        return [str(p) for p in model_input["prompt"]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


class CraftModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from components.head.model import SafetyHead
        from components.lm.source import ModelConfig
        from components.lm.under_test import load_under_test

        folder = Path(context.artifacts["model"])
        cfg = ModelConfig(**json.loads(Path(context.artifacts["model_config"]).read_text()))
        self.lm = load_under_test(str(folder), cfg)
        self.head = SafetyHead.load(folder / "head", self.lm.device)
        serving = context.artifacts.get("serving")  # absent in versions registered before it existed
        self.defaults = ServeDefaults(**json.loads(Path(serving).read_text())) if serving else ServeDefaults()
        router = context.artifacts.get("router")  # only in versions registered behind the prompt router
        self.router, self.base = (None, None) if not router else _router_and_base(Path(router), folder, cfg)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        prompts = _prompts(model_input)
        req = request_params(params, self.defaults)
        if not prompts:
            return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
        adapter = self._routes(prompts)
        parts = {}  # row index -> (written, trace, response, guarded)
        for uses_adapter in (True, False):
            idx = [i for i, a in enumerate(adapter) if a == uses_adapter]
            if idx:
                lm = self.lm if uses_adapter else self.base
                sub = [prompts[i] for i in idx]
                # the guard reads the adapter's head: a prompt base answers is decoded plainly
                out = self._guarded(sub, req) if req.guard and uses_adapter else self._plain(lm, sub, req)
                parts.update({i: row for i, row in zip(idx, zip(*out))})
        written, trace, response, guarded = (list(col) for col in zip(*(parts[i] for i in range(len(prompts)))))
        from components.rl.rewards import latent_scores

        # scores of what the model wrote (the guard's appended refusal is ours, not the model's)
        scores = latent_scores(self.lm.model, self.lm.tokenizer, self.head, prompts, written, self.lm.device)
        completion = [w + REDIRECT if g else w for w, g in zip(written, guarded)]
        return pd.DataFrame({"prompt": prompts, "completion": completion, "trace": trace, "response": response,
                             "latent_p_safe": scores["p_safe"].tolist(), "latent_r_lat": scores["r_lat"].tolist(),
                             "guarded": guarded, "adapter": adapter}, columns=list(OUTPUT_COLUMNS))

    def _routes(self, prompts: list[str]) -> list[bool]:
        """Per prompt, whether the adapter answers it: the router's decision on the base model's state."""
        if self.router is None:
            return [True] * len(prompts)
        from components.route.router import route

        return route(self.router, self.base.model, self.base.tokenizer, prompts, self.base.device)[0]

    @staticmethod
    def _plain(lm, prompts: list[str], req: ServeDefaults):
        """Batched decoding (greedy at temperature 0, else seeded sampling: a request is reproducible)."""
        from components.lm import generation

        sampling = generation.SamplingParams(req.max_new_tokens, BATCH_SIZE, temperature=req.temperature)
        texts = generation.generate(lm, prompts, sampling, desc="predict")
        split = [generation.split_reasoning(t) for t in texts]
        return texts, [t for t, _ in split], [r for _, r in split], [False] * len(texts)

    def _guarded(self, prompts: list[str], req: ServeDefaults):
        """The audit's guarded decoding, prompt by prompt (the guard the evaluation measured)."""
        cfg = AuditConfig(threshold=req.guard_threshold, patience=req.guard_patience, guard=True,
                          max_new_tokens=req.max_new_tokens)
        records = [generate_with_audit(self.lm, self.head, p, cfg) for p in prompts]
        stopped = [bool(r.guard) for r in records]
        written = [(r.completion[: -len(REDIRECT)] if g else r.completion).strip() for r, g in zip(records, stopped)]
        return written, [r.trace for r in records], [r.answer for r in records], stopped


def _router_and_base(router_dir: Path, folder: Path, cfg):
    """The prompt router and the base model it reads (the model card's base, unmerged)."""
    import dataclasses

    from components.route.router import PromptRouter
    from components.lm import runtime
    from components.lm import source as model_source

    meta = json.loads((folder / "model.json").read_text())
    base_cfg = dataclasses.replace(cfg, source=meta["base_model_source"])
    base = runtime.load(model_source.resolve(base_cfg), base_cfg)
    return PromptRouter.load(router_dir), base
