# Every target makes sure .venv exists and matches pyproject.toml first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch, installed before the project so pip never pulls a multi-GB CUDA build.
# On a GPU machine: make TORCH_SPEC="torch==<version>" (or install your CUDA torch into .venv first).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: demo test test-fast venv lint clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/modaltune demo --output $(DEMO_OUT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q --durations=10

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
