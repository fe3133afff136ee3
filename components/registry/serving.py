"""The registered model: an MLflow pyfunc that generates and scores its own reasoning.

Artifacts: ``model/`` (a pipeline output folder: ``model.json`` naming the base model by source
and fingerprint, the LoRA ``adapter/``, the CRAFT ``head/``) and ``model_config.json``. The base
weights are a *reference*, not a copy: ``smollm2`` resolves from its package on any machine that
installed the project; a local or hub base must be reachable where the model is loaded.

``predict`` takes a DataFrame with a ``prompt`` column (or a list of strings) and returns one row
per prompt: completion, trace, response, and the head's latent ``p_safe`` and ``r_lat``.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd


class CraftModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from components.head.model import SafetyHead
        from components.lm.under_test import load_under_test
        from components.lm.source import ModelConfig

        folder = Path(context.artifacts["model"])
        cfg = ModelConfig(**json.loads(Path(context.artifacts["model_config"]).read_text()))
        self.lm = load_under_test(str(folder), cfg)
        self.head = SafetyHead.load(folder / "head", self.lm.device)
        self.max_new_tokens = int(json.loads((folder / "model.json").read_text()).get("serve_max_new_tokens", 64))

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        from components.lm import generation
        from components.rl.rewards import latent_scores

        prompts = list(model_input["prompt"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        texts = generation.generate(self.lm, prompts, generation.SamplingParams(max_new, 16), desc="predict")
        split = [generation.split_reasoning(t) for t in texts]
        scores = latent_scores(self.lm.model, self.lm.tokenizer, self.head, prompts, texts, self.lm.device)
        return pd.DataFrame({"prompt": prompts, "completion": texts, "trace": [t for t, _ in split],
                             "response": [r for _, r in split], "latent_p_safe": scores["p_safe"].tolist(),
                             "latent_r_lat": scores["r_lat"].tolist()})
