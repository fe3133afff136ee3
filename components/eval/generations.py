"""Evaluation's generations kept across runs: a model is not decoded again on the same inputs.

The ``evaluate`` stage decodes every model under test greedily on the same 560 inputs; that is
most of its time (README "Run time"). When only some models changed (a retrained RL adapter, a
seed sweep, a refitted judge or router), the others would be decoded again to the same tokens.
So each model's completions and reference-answer NLLs are kept under
``<workspace>/.cache/evaluations/evaluate/<key>/generations.json`` and read back on a key match.
Verdicts are never kept: the judge runs on every evaluation, so a changed judge always counts.

The key hashes everything that decides the tokens:

- the weights as evaluated (an adapter merged into its base), the model's config and generation
  config, any Python files in its folder, and the tokenizer, by content, so a retrained adapter or
  an edited model directory never reads an old entry;
- the inputs in order and the reference answers (prompt id, prompt, reference);
- the decoding settings (``max_new_tokens``, ``batch_size``, ``batch_tokens``, the engine): batch
  composition can move a near-tied greedy token;
- where it runs: device type, the CPU's kernels (``runtime.cpu_numerics``) or the GPU's name, CUDA,
  cuDNN and TF32 settings, torch threads, and the torch / transformers / peft / tokenizers
  versions, none of which re-runs a DVC stage;
- the generation code (the import closures of ``components.eval.transcripts`` and
  ``components.lm.under_test``).

An entry is written whole or not at all (``atomic_path``); one that cannot be read or does not
fit the inputs is reported and decoded again. ``CRAFT_EVAL_CACHE=off`` turns the cache off; any
other value is the folder to use instead of ``.cache/evaluations``. ``craft cache`` lists these
entries and ``craft cache --prune`` removes old ones (``components.upkeep.cache``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd
import torch

from components.core.code import closure_digest
from components.core.io import atomic_path
from components.data.records import stable_id
from components.eval import transcripts as tx
from components.lm import runtime
from components.lm.runtime import LoadedModel

log = logging.getLogger("craft.evaluate")
ENV = "CRAFT_EVAL_CACHE"
STAGE = "evaluate"
FILE = "generations.json"
CODE = ("components.eval.transcripts", "components.lm.under_test")
"""Modules whose import closures decide the generated tokens (part of the key)."""


def root() -> Path | None:
    """The cache folder: ``$CRAFT_EVAL_CACHE``, None when it is ``off``, else the workspace's
    ``.cache/evaluations`` (``CRAFT_WORKSPACE``: a DVC experiment in a temporary copy shares the
    workspace's entries)."""
    chosen = os.environ.get(ENV, "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    return Path(chosen) if chosen else Path(os.environ.get("CRAFT_WORKSPACE", ".")) / ".cache" / "evaluations"


PATHS = ("_name_or_path", "_commit_hash", "transformers_version", "name_or_path", "is_local", "local_files_only",
         "cache_dir", "vocab_file", "merges_file", "tokenizer_file", "token", "trust_remote_code")
"""Config and tokenizer entries that say where and how a model was read, not how it computes (left
out of the key, so a copy of the workspace or an offline switch still finds its entries)."""
STATE = ("padding", "truncation")
"""Tokenizer backend entries that the last call set (a padded batch), not how it tokenizes."""


def _config_fields(config) -> str:
    fields = {k: v for k, v in (config.to_dict() if config is not None else {}).items() if k not in PATHS}
    return json.dumps(fields, sort_keys=True, default=str)


def tokenizer_digest(tokenizer) -> str:
    """sha256 over how ``tokenizer`` encodes and decodes: its backend (vocabulary, merges,
    normalisation; not the padding state a batch call leaves behind), its settings (special tokens,
    clean-up of spaces) and its chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in STATE}
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if k not in PATHS}
    h.update(json.dumps([settings, tokenizer.special_tokens_map, tokenizer.chat_template, tokenizer.padding_side,
                         getattr(tokenizer, "clean_up_tokenization_spaces", None)], sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_digest(lm: LoadedModel) -> str:
    """sha256 over what decides ``lm``'s tokens besides the inputs: its config and generation config
    (EOS ids), the Python files shipped in its folder (``trust_remote_code``), the tokenizer, and
    every parameter and persistent buffer as evaluated (name, dtype, shape, bytes; an adapter is
    merged by then). Non-persistent buffers such as rotary frequencies follow from the config."""
    h = hashlib.sha256()
    for config in (lm.model.config, getattr(lm.model, "generation_config", None)):
        h.update(_config_fields(config).encode())
    folder = Path(str(getattr(lm.model.config, "_name_or_path", "")))
    for code in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        h.update(code.name.encode() + code.read_bytes())
    h.update(tokenizer_digest(lm.tokenizer).encode())
    for name, t in sorted(lm.model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def where(device: torch.device) -> list[str]:
    """What, besides the weights, makes a device compute other tokens."""
    import peft
    import tokenizers
    import transformers

    if device.type == "cpu":
        kernels = [runtime.cpu_numerics()]
    else:
        kernels = [torch.cuda.get_device_name(device), str(torch.version.cuda), str(torch.backends.cudnn.version()),
                   f"tf32={torch.backends.cuda.matmul.allow_tf32}/{torch.backends.cudnn.allow_tf32}"]
    return [device.type, *kernels, f"threads={torch.get_num_threads()}", torch.__version__,
            transformers.__version__, peft.__version__, tokenizers.__version__]


def key(lm: LoadedModel, inputs: pd.DataFrame, prompts: pd.DataFrame, decoding: dict) -> str:
    """The entry name for ``lm`` decoding ``inputs`` (rows in order) with ``decoding`` (every setting
    the caller passes to the decoder), and scoring the reference answers of ``prompts``."""
    refs = tx.reference_rows(prompts)[["prompt_id", "prompt", "reference"]].astype(str).values.tolist()
    parts = [model_digest(lm), json.dumps(list(inputs.input)), json.dumps(refs),
             json.dumps({**decoding, "engine": lm.engine}, sort_keys=True), *where(lm.device),
             *(closure_digest(m) for m in CODE)]
    return stable_id(*parts, length=24)


def read(folder: Path, rows: int, refs: int) -> tuple[list[str], list[tuple[str, float, int]]] | None:
    """(completions, reference NLL rows) of the entry ``folder``, or None when there is none or it
    cannot be used (said in the log, and then decoded again). ``rows``, ``refs``: how many
    completions and NLL rows the inputs need. A hit marks the entry as used now (``craft cache``
    prunes by age)."""
    path = folder / FILE
    try:
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        completions = [str(c) for c in data["completions"]]
        nlls = [(str(p), float(n), int(k)) for p, n, k in data["nlls"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("evaluation cache entry %s cannot be read (%s): decoding again", path, exc)
        return None
    if (len(completions), len(nlls)) != (rows, refs):
        log.warning("evaluation cache entry %s holds %d completions and %d reference NLLs for %d inputs and %d "
                    "references: decoding again", path, len(completions), len(nlls), rows, refs)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return completions, nlls


def write(folder: Path, completions: list[str], nlls: list[tuple[str, float, int]], model_id: str) -> None:
    """Keep an entry (whole or not at all); a failure to write is logged, never fatal."""
    try:
        with atomic_path(folder / FILE) as tmp:
            tmp.write_text(json.dumps({"model": model_id, "completions": completions,
                                       "nlls": [list(r) for r in nlls]}))
            tmp.chmod(0o644)  # a temporary file is private; an entry is readable like the workspace's other files
    except OSError as exc:
        log.warning("evaluation cache entry %s not written (%s); the evaluation is unaffected. Point "
                    "CRAFT_EVAL_CACHE at a writable folder, or set it to off.", folder, exc)


def entry(cache: Path, lm: LoadedModel, inputs: pd.DataFrame, prompts: pd.DataFrame, decoding: dict) -> Path:
    """The folder of ``lm``'s entry under ``cache``."""
    return cache / STAGE / key(lm, inputs, prompts, decoding)
