# Two commands on a fresh machine: `make run` and `make test`. Everything else is set-up they share.
# The first interpreter that runs and is >= 3.11 (pyenv shims may exist for versions not selected).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup run test lint bench clean
.DEFAULT_GOAL := run

setup: $(STAMP) gen/.stamp

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "leadmesh needs Python >= 3.11 on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# gRPC stubs are generated, never committed: `gen/` is put on the venv's path by a .pth file.
gen/.stamp: $(STAMP) $(PROTOS)
	$(PY) -m services.kit.protogen
	touch $@

run: setup
	exec $(VENV)/bin/leadmesh up

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/login.py
	$(PY) bench/vault.py
	$(PY) bench/ingest.py
	$(PY) bench/deliver.py

clean:
	rm -rf gen var .pytest_cache
