# Every target makes sure .venv exists and matches pyproject.toml first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# The CPU build of torch, installed before the project so pip never pulls a multi-GB CUDA build.
# On a GPU machine: make TORCH_SPEC="torch==<version>" (or install your CUDA torch into .venv first).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: demo test test-fast test-browser venv java browser lint clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,serve,serve-test,detect,onnx,track,hub,deepspeed]"
	@touch $(STAMP)

venv: $(STAMP)

# The demo installs only what it runs (the core and the `demo` extra), so the test tools and optional
# integrations `make test` installs never lengthen a first `make demo`; a .venv that `make test` set up
# for this pyproject.toml already has all of it. torch comes through pip (only pip sees the local CPU wheel),
# without compiling its thousands of modules to bytecode (Python compiles the few it imports); the rest
# through uv, which fetches in parallel: 2.5-4x faster than pip here, which stays the fallback.
$(DEMO_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt Makefile ]; then :; else \
	  $(PY) -m pip install -q --no-compile "$(TORCH_SPEC)" && \
	  if $(PY) -m pip install -q --only-binary=:all: uv; then $(PY) -m uv pip install -q --python $(PY) -e ".[demo]"; \
	  else $(PY) -m pip install -q --no-compile -e ".[demo]"; fi; fi
	@touch $(DEMO_STAMP)

# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning between parallel regions. On a
# busy machine (more runnable processes than cores) spinning threads starve each other: a training step of the
# demo's CLIP took 13 s spinning and 0.5 s passive, the same numbers either way (it changes no arithmetic).
demo: $(DEMO_STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(VENV)/bin/modaltune demo --output $(DEMO_OUT)

# Caption metrics run the official Java PTB tokenizer when Java is present (a Python twin of it
# otherwise) and the tests check both, so a Java runtime is installed where this user may do so.
java:
	@command -v java >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -qq default-jre-headless >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq default-jre-headless >/dev/null 2>&1; }; }; } || \
	  echo "note: no Java runtime here; the caption tests check the Python PTB tokenizer against stored Java output"

# The server's page is tested in a real headless Chromium (tests/test_serve_browser.py, Playwright). Playwright's
# own browser download needs its CDN, so Chromium comes from the OS packages where this user may install them;
# without one the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: no Chromium here (nor root and apt-get to install it); the browser test will be skipped"

test: $(STAMP) java browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q --durations=10

test-browser: $(STAMP) browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests/test_serve_browser.py

test-fast: $(STAMP) java
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
