# The two commands of the README. Each creates .venv when missing; `make demo` installs the runtime
# only, `make test` (and lint, bench) the dev tools too. A stamp in .venv remembers each install, so
# the project is installed again only when pyproject.toml changed (or .venv was removed): a fresh
# machine needs nothing but Python 3.11+, and a second `make demo` goes straight to the demo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: install demo portal test lint bench clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "refsync needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

# Editable installs: code changes need no reinstall, only a changed pyproject.toml does.
$(RUNTIME): pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

# The dev extras include the runtime, so this install stands for both stamps.
$(DEV): pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(RUNTIME)

install: $(DEV)

demo: $(RUNTIME)
	$(VENV)/bin/refsync demo

# The demo, then the partner portal and the program dashboard of its ledger until Ctrl-C
# (their URLs and demo credentials are printed; PORTAL_LISTEN=host:port to serve elsewhere).
PORTAL_LISTEN ?= 127.0.0.1:8787
portal: $(RUNTIME)
	$(VENV)/bin/refsync demo --portal --listen $(PORTAL_LISTEN)

test: $(DEV)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(DEV)
	$(VENV)/bin/ruff check refsync connector adapters state tests benchmarks
	$(VENV)/bin/mypy -p refsync

bench: $(DEV)
	$(PY) benchmarks/import_bench.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
