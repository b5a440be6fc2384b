# The two commands of the README. Each creates .venv when missing and (re)installs the project
# into it every time, so a fresh machine needs nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo portal test lint bench clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "refsync needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

demo: install
	$(VENV)/bin/refsync demo

# The demo, then the partner portal and the program dashboard of its ledger until Ctrl-C
# (their URLs and demo credentials are printed; PORTAL_LISTEN=host:port to serve elsewhere).
PORTAL_LISTEN ?= 127.0.0.1:8787
portal: install
	$(VENV)/bin/refsync demo --portal --listen $(PORTAL_LISTEN)

test: install
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check refsync connector adapters state tests benchmarks
	$(VENV)/bin/mypy -p refsync

bench: install
	$(PY) benchmarks/import_bench.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
