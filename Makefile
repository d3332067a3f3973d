# Two commands for a fresh machine:  make run  (the whole stack)  and  make test  (all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-cluster install system-deps lint bench bench-deps mutation clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# System packages come from Debian's archive when the machine lacks them:
# - redis-server: the tests start their own; `make run` starts one when none answers at REDIS_URL;
# - docker-compose: `make test` validates docker-compose.yml with a real compose client
#   (`docker compose` v2 is used instead where it exists);
# - ip (iproute2): the cluster test builds its hosts from network namespaces with it;
# - chromium (+ a font): the operator page test drives it headless through Playwright (never a
#   browser download). If it cannot be installed, that one test skips and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
		|| missing="$$missing docker-compose"; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(APT_GET) update -q && $(APT_GET) install -y -q --no-install-recommends $$missing; \
	fi
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium"; \
		{ $(APT_GET) update -q && $(APT_GET) install -y -q --no-install-recommends \
			chromium fonts-dejavu-core; } \
		|| echo "WARNING: chromium could not be installed; the operator page test will skip" >&2; }

install: system-deps $(STAMP)

run: install
	$(PY) -m devstack.run

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy api worker cli devstack shared mutation

# pytest exits 5 when it collected no tests: that must fail, never pass silently. Skips are
# listed with their reason (-rs). The suite includes the multi-host cluster test
# (tests/cluster, ~2 min, needs root); REQUIRE_NETNS=1 turns its skip into a failure.
test: lint
	$(PY) -m pytest -q -rs -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Only the multi-host cluster test.
test-cluster: install
	$(PY) -m pytest -q -rs -p no:cacheprovider tests/cluster $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Mutation testing of the core modules (mutmut; README "Mutation testing"): score per module
# and surviving mutants in mutation/REPORT.md; fails when a module is under 85 %. About
# 15-20 minutes on 2 cores, so not part of `make test`: run it before merging a change to a
# core module. MUTATION_ARGS='shared.chunking.*' runs one module's mutants only.
mutation: install
	$(PY) -m mutation.run $(MUTATION_ARGS)

# Benchmarks (each starts its own services; MONGO_URL points them at a real MongoDB).
# BENCH_ARGS='--append-results' records the blocks in bench/RESULTS.md.
# The lookup benchmarks drive load with wrk (Debian's package).
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "installing wrk"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q wrk; }

bench: install bench-deps
	$(PY) -m bench.parse $(BENCH_ARGS)
	$(PY) -m bench.ingest $(BENCH_ARGS)
	$(PY) -m bench.lookups $(BENCH_ARGS)
	$(PY) -m bench.latency $(BENCH_ARGS)
	$(PY) -m bench.api_scaling $(BENCH_ARGS)
	$(PY) -m bench.switch $(BENCH_ARGS)
	$(PY) -m bench.load $(BENCH_ARGS)
	$(PY) -m bench.stall $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data mutants .pytest_cache .mypy_cache .ruff_cache .hypothesis
