# Two commands (README): `make run` starts a local network and answers a chat;
# `make test` installs what the tests need and runs lint, types and the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

run: $(STAMP)
	$(BIN)/infernet up

test: $(STAMP)
	$(BIN)/ruff check infernet coordinator tests bench examples
	$(BIN)/mypy --strict infernet coordinator
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check infernet coordinator tests bench examples
	$(BIN)/mypy --strict infernet coordinator

bench: $(STAMP)
	$(BIN)/python -m bench

$(STAMP): pyproject.toml scripts/system-deps.sh
	./scripts/system-deps.sh
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
