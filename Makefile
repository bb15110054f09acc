# Sluice: `make demo` runs the chain end to end on an embedded moto server; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install browser redis-binary demo test lint typecheck layers localstack-venv localstack-up localstack-down bench clean

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

# The redis-server binary test_faults.py starts on its own port (it kills and restarts it): Debian's package, when
# missing (idempotent). The Redis the other tests use at 127.0.0.1:6379 is a service, not started here.
redis-binary:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  command -v apt-get >/dev/null && { $$SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq redis-server >/dev/null; }; } \
	  || echo "make redis-binary: could not install redis-server; the fault tests will skip"; }

localstack-venv:
	$(PYTHON) localstack/localstack_host.py venv

localstack-up: localstack-venv
	$(PYTHON) localstack/localstack_host.py start

localstack-down:
	$(PYTHON) localstack/localstack_host.py stop

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# sluice/core, sluice/ml, sluice/events, sluice/handlers and sluice/infra are committed symlinks to the top-level folders.
typecheck: $(STAMP)
	$(VENV)/bin/mypy -p sluice

# The import-layer contract in pyproject.toml ([tool.importlinter]).
layers: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP) browser redis-binary localstack-venv lint typecheck layers
	$(PY) -m pytest

# A quick look at the framework's own costs; every script in benchmarks/ says in its docstring what it measures.
bench: $(STAMP)
	$(PY) benchmarks/cli_startup.py --runs 5
	$(PY) benchmarks/gate_bootstrap.py --repeats 1
	$(PY) benchmarks/training_overhead.py --repeats 1

clean:
	rm -rf $(VENV) localstack/.venv localstack/.state .pytest_cache
