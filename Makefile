# Sluice: `make demo` runs the chain end to end on an embedded moto server; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install browser demo test lint typecheck localstack-venv localstack-up localstack-down bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sluice demo

# Headless Chromium and its chromedriver for the dashboard's browser tests (Debian/Ubuntu packages; idempotent).
# Without apt-get or root it says so and the browser tests skip (they fail instead when CI is set).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  command -v apt-get >/dev/null && { $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }; } \
	  || echo "make browser: could not install chromium and chromium-driver; the browser tests will skip"; }

localstack-venv:
	$(PYTHON) localstack/localstack_host.py venv

localstack-up: localstack-venv
	$(PYTHON) localstack/localstack_host.py start

localstack-down:
	$(PYTHON) localstack/localstack_host.py stop

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy cannot follow setuptools' package-dir mapping, so it checks a symlinked sluice/ tree.
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/sluice
	for f in sluice/*.py; do ln -s ../../$$f .typecheck/$$f; done
	for d in core ml events handlers infra; do ln -s ../../$$d .typecheck/sluice/$$d; done
	ln -s ../../sluice/commands .typecheck/sluice/commands
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p sluice

test: $(STAMP) browser localstack-venv lint typecheck
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/dedupe_overhead.py

clean:
	rm -rf $(VENV) localstack/.venv localstack/.state .pytest_cache
