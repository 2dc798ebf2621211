# The two commands of the README: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml

.PHONY: run test bench venv redis clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[export,test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/outerloop serve -c $(CONFIG)

# A Redis server from Debian's packages, for the shared-state tests (they start their own on a free port).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

test: $(STAMP) redis
	$(PY) -m mypy core filters plugins router_model
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/routing.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
