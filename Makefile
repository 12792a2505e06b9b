# make test      - set up .venv, redis-server and docker-compose if missing, then lint
#                  (ruff, import contracts) and run every test (unit, integration, e2e)
# make test-unit - lint and the unit tests only (tests/unit: no servers), in seconds
# make demo      - the whole pipeline on this machine: redis, 3 real Traefiks, fake k8s API, workers
# make bench     - every benchmark of bench/ in turn, then one table: figure, goal, baseline, met
#                  (not part of make test; BENCH_ARGS=--quick for a smoke run)
# make chaos     - the real pipeline under every fault at once, then an exact reconciliation
#                  (CHAOS_SECONDS of traffic, default 600; CHAOS_SEED, default random; CHAOS_DEDUPE=on|off|both)
# make docs      - regenerate README.md's configuration table from app/settings.py
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 90

.PHONY: test test-unit demo bench chaos docs lint lock redis-server docker-compose promtool clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# pip may print "WARNING: Location 'file:///…/simple/<project>/' is ignored" for an
# extra-index-url of the machine's own pip config (`pip config list`) that is a local mirror
# without that project: the machine's configuration, left as it is (where the mirror is the
# only index, it is what makes the install work).
$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

redis-server:
	@command -v redis-server >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "redis-server missing: installing Debian's redis-server package"; \
	  (apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1)) && \
	  systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	  command -v redis-server >/dev/null 2>&1 || { echo "could not install redis-server with apt-get"; exit 1; }; \
	else \
	  echo "redis-server is not installed: run 'sudo apt-get install redis-server' (Debian/Ubuntu) or put redis-server on PATH"; exit 1; \
	fi

# Only `docker-compose config` is run (the tests validate docker-compose.yml), so no Docker
# engine: --no-install-recommends keeps Debian's package from pulling docker.io in.
# promtool checks the alert rules and the dashboard's queries (tests/unit/test_monitoring.py);
# Debian ships it in the prometheus package (--no-install-recommends: no extra services).
promtool:
	@command -v promtool >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "promtool missing: installing Debian's prometheus package"; \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1) || true; \
	  command -v promtool >/dev/null 2>&1 || { echo "could not install promtool with apt-get"; exit 1; }; \
	else \
	  echo "promtool is not installed: run 'sudo apt-get install prometheus' (Debian/Ubuntu) or put promtool on PATH"; exit 1; \
	fi

docker-compose:
	@command -v docker-compose >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "docker-compose missing: installing Debian's docker-compose package"; \
	  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1) || true; \
	  command -v docker-compose >/dev/null 2>&1 || { echo "could not install docker-compose with apt-get"; exit 1; }; \
	else \
	  echo "docker-compose is not installed: run 'sudo apt-get install docker-compose' (Debian/Ubuntu) or put docker-compose on PATH"; exit 1; \
	fi

# lint-imports checks the import contracts in .importlinter (it finds that file itself).
lint: $(STAMP)
	$(BIN)/ruff check app workers sim tests bench docs beat_schedule.py
	$(BIN)/lint-imports --no-logo

test: $(STAMP) redis-server docker-compose promtool lint
	$(BIN)/pytest -q

test-unit: $(STAMP) lint
	$(BIN)/pytest -q tests/unit

demo: $(STAMP) redis-server
	$(BIN)/python -m sim.demo --seconds $(DEMO_SECONDS)

# BENCH_ARGS=--quick for a smoke run; BENCH_ARGS='--only delivery,parse' for some of them.
BENCH_ARGS ?=
bench: $(STAMP) redis-server
	$(BIN)/python bench/run.py $(BENCH_ARGS)

CHAOS_SECONDS ?= 600
CHAOS_SEED ?=
CHAOS_DEDUPE ?= on
chaos: $(STAMP) redis-server
	$(BIN)/python -m sim.chaos --seconds $(CHAOS_SECONDS) --dedupe $(CHAOS_DEDUPE) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

# README.md's configuration table, regenerated from app/settings.py (a unit test fails when stale).
docs: $(STAMP)
	$(BIN)/python docs/settings_table.py --write

# Resolve pyproject.toml's dependencies (dev extras included) in a scratch venv, keeping
# the versions requirements.lock already pins, and write the full set. To move a package
# to a newer release, delete its line first.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q -c requirements.lock '.[dev]'
	{ echo "# Resolved dependency set, installed by make as constraints: pip install -c requirements.lock -e '.[dev]'"; \
	  echo "# Regenerate: make lock"; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -vi '^traefik-metrics-scraper'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf $(LOCK_VENV) build

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache *.egg-info
