# Two commands for a fresh machine:  make run  (the whole stack)  and  make test  (all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-cluster install system-deps lint docs bench bench-deps bench-scale mutation clean edge-cert flower-htpasswd audit lock base-digest

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
# - sqlite3 (the shell) and postgresql (server binaries: the test starts its own cluster on a
#   free port, never the machine's): the real-writers test exports files with them;
# - prometheus (promtool and the server): `make test` checks and unit-tests the alert rules
#   in deploy/prometheus with promtool, and one test fires alerts on a real server;
#   `make run` starts one with DEVSTACK_PROMETHEUS=true;
# - chromium (+ a font): the operator page test drives it headless through Playwright (never a
#   browser download). If it cannot be installed, that one test skips and says why.
# - nginx, openssl: the edge test runs deploy/nginx/ with Debian's nginx in front of the API,
#   with a self-signed certificate made by openssl (as `make edge-cert` does);
#   the edge-cache test and benchmarks start their own with deploy/nginx/edge/lookup-cache*.conf.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
		|| missing="$$missing docker-compose"; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$$missing iproute2"; \
	command -v sqlite3 >/dev/null 2>&1 || missing="$$missing sqlite3"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } \
		|| missing="$$missing prometheus"; \
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
	$(VENV)/bin/lint-imports --no-logo

# The documentation site (mkdocs.yml) into site/, in strict mode: a broken link or anchor, or a
# page missing from the nav, fails the build. Not --quiet: mkdocs 1.6 then drops the warnings
# before strict mode counts them, and the build passes.
docs: install
	$(PY) -m mkdocs build --strict --clean

# pytest exits 5 when it collected no tests: that must fail, never pass silently. Skips are
# listed with their reason (-rs). The suite includes the multi-host cluster test
# (tests/cluster, ~2 min, needs root); REQUIRE_NETNS=1 turns its skip into a failure. It runs
# `promtool check rules/config` and `promtool test rules` on deploy/prometheus
# (tests/unit/test_prometheus_rules.py) and fires the alerts on a real Prometheus
# (tests/e2e/test_alerts.py).
test: lint docs
	$(PY) -m pytest -q -rfEs -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Only the multi-host cluster test.
test-cluster: install
	$(PY) -m pytest -q -rfEs -p no:cacheprovider tests/cluster $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Mutation testing of the core modules (mutmut; docs/development.md): score per module
# and surviving mutants in mutation/REPORT.md; fails when a module is under 85 %. About
# 15-20 minutes on 2 cores, so not part of `make test`: run it before merging a change to a
# core module. MUTATION_ARGS='worker.chunking.*' runs one module's mutants only.
mutation: install
	$(PY) -m mutation.run $(MUTATION_ARGS)

# Benchmarks (each starts its own services; MONGO_URL points them at a real MongoDB).
# BENCH_ARGS='--append-results' records the blocks in bench/RESULTS.md.
# The lookup benchmarks drive load with wrk (Debian's package). bench.zipf builds its 20M-row
# dataset once (~15 min on a busy 2-core machine) in data/bench-zipf and reuses it.
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
	$(PY) -m bench.zipf $(BENCH_ARGS)
	$(PY) -m bench.http_protocol $(BENCH_ARGS)
	$(PY) -m bench.stall $(BENCH_ARGS)

# The edge's TLS certificate for docker-compose.yml (deploy/tls/, never committed): a
# self-signed one for a first start and for tests; production puts its real pair there.
EDGE_HOST ?= localhost
edge-cert:
	mkdir -p deploy/tls
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$(EDGE_HOST)" \
		-addext "subjectAltName=DNS:$(EDGE_HOST)" \
		-keyout deploy/tls/tls.key -out deploy/tls/tls.crt
	chmod 600 deploy/tls/tls.key

# The edge's login for Flower (https://<edge>/flower/): deploy/edge-auth/flower.htpasswd,
# never committed, from FLOWER_BASIC_AUTH (user:password, the login Flower checks itself; several
# comma-separated). Only salted SHA-512 crypt hashes are written, readable by the edge's nginx
# user; the password reaches openssl on stdin, never on a command line. Run it again after
# changing FLOWER_BASIC_AUTH.
EDGE_AUTH_DIR ?= deploy/edge-auth
flower-htpasswd:
	@case "$$FLOWER_BASIC_AUTH" in ?*:?*) ;; *) echo "set FLOWER_BASIC_AUTH=user:password" >&2; exit 1;; esac
	@mkdir -p $(EDGE_AUTH_DIR)
	@set -ef; out="$(EDGE_AUTH_DIR)/flower.htpasswd"; umask 022; : > "$$out.tmp"; \
	IFS=,; for login in $$FLOWER_BASIC_AUTH; do \
		user="$${login%%:*}"; password="$${login#*:}"; \
		case "$$login" in ?*:?*) ;; *) echo "not user:password: a login of FLOWER_BASIC_AUTH" >&2; rm -f "$$out.tmp"; exit 1;; esac; \
		hash="$$(printf '%s' "$$password" | openssl passwd -6 -stdin)"; \
		printf '%s:%s\n' "$$user" "$$hash" >> "$$out.tmp"; \
	done; \
	mv "$$out.tmp" "$$out"; echo "wrote $$out"

# The images install requirements.lock: every runtime package, indirect ones too, pinned
# with hashes. Regenerate it after changing requirements.txt.
lock: install
	$(PY) -m pip install --quiet pip-tools
	$(PY) -m piptools compile --quiet --generate-hashes --no-emit-find-links --no-emit-index-url \
		--strip-extras --output-file=requirements.lock requirements.txt

# The FROM line of the current python:3.11-slim-bookworm (its Python version and the digest of
# its multi-platform index), for Dockerfile.api and Dockerfile.worker (needs a Docker engine
# with access to Docker Hub; without one: docs/security.md, "Base image").
BASE_IMAGE ?= python:3.11-slim-bookworm
base-digest:
	@docker pull -q $(BASE_IMAGE) >/dev/null
	@version="$$(docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' $(BASE_IMAGE) \
		| sed -n 's/^PYTHON_VERSION=//p')"; \
	digest="$$(docker inspect --format '{{index .RepoDigests 0}}' $(BASE_IMAGE))"; \
	echo "FROM python:$$version-slim-bookworm@$${digest#*@}"

# Known vulnerabilities in the pinned runtime dependencies (docs/security.md).
audit: install
	$(PY) -m pip install --quiet pip-audit
	$(PY) -m pip_audit --require-hashes --disable-pip -r requirements.lock

# A scale run: SCALE_ROWS rows through the HTTP upload, load and switch, then a second file
# replacing the first, lookups alongside (docs/scaling.md). Long at large sizes: run it on a
# quiet machine.
SCALE_ROWS ?= 2000000
bench-scale: install
	$(PY) -m bench.scale --rows $(SCALE_ROWS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data mutants .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis
