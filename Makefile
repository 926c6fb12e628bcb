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

.PHONY: setup test demo bench clean

$(BIN)/.mtld-ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.mtld-ready

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	BIN=$(BIN) examples/demo.sh

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) examples/tiny-bert .mtld-demo
