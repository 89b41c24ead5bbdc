# t2v_exp — `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# torch and torchvision must come from matching builds: install them together, first.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
ARGS ?=
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install train test test-full lint format sweep bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv, install the project with its dev tools, fetch the FVD detector (idempotent)
	@$(PY) -m t2v_exp.weights fetch fvd

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

train: install ## run the default job (tiny model, synthetic data, offline W&B); ARGS='model=cogvideox_tiny'
	$(PY) -m t2v_exp.train $(ARGS)

SWEEP ?= compare_models_tiny
sweep: install ## the model comparison + report (SWEEP=compare_models on GPUs; default: every tiny family on CPU)
	$(PY) -m t2v_exp.train sweep=$(SWEEP) $(ARGS)

test: install ## the fast test suite (what CI runs)
	$(PY) -m pytest -m "not slow and not gpu" -q --timeout=600 --durations=25

test-full: install ## every test, slow end-to-end ones included (GPU tests skip without CUDA)
	$(PY) -m pytest -q

lint: install ## ruff
	$(PY) -m ruff check t2v_exp tests bench

format: install ## ruff autofix + format
	$(PY) -m ruff check --fix t2v_exp tests bench
	$(PY) -m ruff format t2v_exp tests bench

bench: install ## CPU benchmarks; tables on stdout, raw figures in bench/results/*.json
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean: ## remove run outputs and caches (not the venv)
	rm -rf outputs/runs outputs/sweeps .pytest_cache .ruff_cache
