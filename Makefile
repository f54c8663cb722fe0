# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PROVIDERS = $(wildcard providers/*/pyproject.toml)

.PHONY: install demo test bench typecheck clean

$(STAMP): pyproject.toml $(PROVIDERS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(foreach p,$(PROVIDERS),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lockkit init --if-missing
	$(BIN)/python -m examples.flask_clerk

test: install
	$(BIN)/python -m pytest

typecheck: install
	$(BIN)/python -m mypy

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
