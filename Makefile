# Two commands for a fresh machine (see README):
#   make run    create .venv, install crossent, run the main job
#   make test   create .venv, install crossent with its test extras, run the whole suite
# and the documentation site (mkdocs.yml, docs/):
#   make docs        build it into site/, strictly (a broken link or reference fails)
#   make serve-docs  serve it at http://127.0.0.1:8000, rebuilt on every change
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned through constraints.txt: an unpinned torch pulls several GB of CUDA wheels.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test lint bench docs serve-docs clean

run: $(VENV)/.installed-run
	$(BIN)/crossent train

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_numpy.py

# NO_MKDOCS_2_WARNING: silences Material's notice about MkDocs 2 on every build
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

serve-docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[cli]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[docs]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[dev]"
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
