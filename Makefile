# mtld: `make demo` and `make test` work on a fresh machine with python3 (>= 3.11).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# On Linux, install this torch first. The pinned release is a CPU build on our
# CPU-only machines (and keeps pip from pulling a multi-GB CUDA build there);
# set TORCH= to keep whatever pip picks, e.g. on a CUDA box. macOS takes
# PyPI's torch through `pip install .` as usual.
ifeq ($(shell uname -s),Linux)
TORCH ?= torch==2.13.0
endif

# The suite runs in parallel: pytest-xdist, one worker per core, a whole test
# file per worker (loadfile), so that a file's module-scoped fixtures (a tiny
# model, a training run) are built once and its tests never race each other.
# `make test` runs everything, as CI does; `make test-fast` leaves out the tests
# marked slow (real processes, signals, rlimits, whole training runs). The Ray
# tests use the head named by MTLD_TEST_RAY_ADDRESS (.ci/run starts one), else
# start their own on 127.0.0.1 and stop it.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

.PHONY: setup test test-fast lint docs demo bench clean

$(BIN)/.mtld-ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $@

setup: $(BIN)/.mtld-ready

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

# The layers and the types: ruff (unused and undefined names), mypy (strict on the daemon, the executors, the
# policy and the run files), import-linter (the contracts in pyproject.toml: docs/architecture.md).
lint: setup
	$(BIN)/ruff check mtld tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (docs/, mkdocs.yml), built strictly: a broken link or anchor fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: setup
	BIN=$(BIN) examples/demo.sh

# The real-model rows need the bench extra (a packaged MiniLM, ~90 MB); without it they are skipped. Then each
# contender in a fresh process (bench/fresh.md), attention dropout's speed and scores (bench/dropout.md), what
# compiling pays (bench/compile.md), submit to model/ against a Trainer script (bench/e2e.md, about an hour), and
# their headline rows gathered into bench/results.md.
bench: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,bench]"
	$(BIN)/python -m bench --threads 1
	$(BIN)/python -m bench.fresh
	$(BIN)/python -m bench.dropout
	$(BIN)/python -m bench.compile --threads 1
	$(BIN)/python -m bench.e2e
	$(BIN)/python -m bench.collect

clean:
	rm -rf $(VENV) examples/tiny-bert .mtld-demo site
