# The two commands of the README: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# One stamp per install: `make run` installs the runtime only; `make test` adds the test and export extras
# (torch among them), so a `make test` after a `make run` installs just what is missing.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# Real clients the tests drive (Claude Code, Codex CLI), pinned in tests/clients/package-lock.json.
CLIENTS_STAMP := tests/clients/node_modules/.installed
CONFIG ?= configs/default.yaml

.PHONY: run test bench soak venv redis clean agents

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[export,test]'
	touch $(TEST_STAMP)

$(CLIENTS_STAMP): tests/clients/package.json tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund
	touch $(CLIENTS_STAMP)

venv: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/outerloop serve -c $(CONFIG)

# The agent loop offline (docs/agents.md): the proxy on configs/agents.yaml, the two example agents and the keyword
# router they are chosen by, then two requests through it; Ctrl-C stops everything.
agents: $(RUN_STAMP)
	$(PY) -m examples.agents -c configs/agents.yaml

# A Redis server from Debian's packages, for the shared-state tests (they start their own on a free port).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

test: $(TEST_STAMP) $(CLIENTS_STAMP) redis
	$(PY) -m mypy core filters plugins router_model
	$(PY) -m pytest -q

bench: $(TEST_STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/resilience.py
	$(PY) bench/routing.py
	$(PY) bench/agents.py

# 100k requests through the full chain with faults mixed in; RSS and open fds plotted (the bench extra's
# matplotlib), growth after warm-up checked. A benchmark, not a test: a few minutes, bench/out/soak.{md,png}.
$(VENV)/.installed-bench: $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

soak: $(VENV)/.installed-bench
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
