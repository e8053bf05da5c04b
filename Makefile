# Quick start: `make demo` (set up + run the demo) and `make test` (set up + run the test suite).
# Each target creates ./.venv if needed and installs everything it needs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv install test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Install torch first and on its own: on our CPU machines this pin resolves to the CPU build.
# `demo` needs the package only; `test` adds the [dev] extras (test tools, serving, synthesis).
$(VENV)/.installed-base: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-base
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed-dev

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: $(VENV)/.installed-base
	$(BIN)/internvlu demo

clean:
	rm -rf $(VENV)
