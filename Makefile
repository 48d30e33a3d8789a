# Herald: `make run` starts the platform locally, `make test` tests it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install system-deps run test test-fast chaos audit lock schemas migrate topics clean help bench bench-router bench-email bench-inapp bench-schedules

help:
	@echo "make run     start Kafka (embedded), PostgreSQL, Redis, every service and the sandbox"
	@echo "make test    the whole test suite against a real broker, PostgreSQL and Redis"
	@echo "make test-fast   the same without the process-per-service suites and the browser (about 3 minutes)"
	@echo "make chaos   faults under load (kills, restarts, provider trouble, poison) on its own PostgreSQL, Redis and broker"
	@echo "make audit   known vulnerabilities in requirements.lock (fails only when the lock changed and a fix exists)"
	@echo "make schemas regenerate schemas/ from the models"
	@echo "make lock    re-pin requirements.lock (tests too) and requirements.runtime.lock (the image) from pyproject.toml"
	@echo "make bench   the whole pipeline end to end next to a Celery worker: throughput, CPU, latency, broadcast, memory"
	@echo "make bench-router / bench-email / bench-inapp   print one service's throughput and latency figures"
	@echo "make bench-schedules   release 10,000 schedules due at one second among 1,000,000 pending"

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "herald: $(PYTHON) is missing; install Python 3.11+"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	$(UV) pip install --python $(BIN)/python -q -r requirements.lock
	$(UV) pip install --python $(BIN)/python -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Programs the tests drive that come from the system's packages (Debian names).
system-deps:
	@bash scripts/system-deps.sh

# The local platform is the development environment (sandbox providers, demo pages); the default is production.
run: install
	HERALD_ENVIRONMENT=$${HERALD_ENVIRONMENT:-development} $(BIN)/herald run

# The pure tests (no broker, database, Redis or process) also run with the clock a year ahead and a
# year back, so that no test or decision depends on the day it runs; the whole suite runs on real time.
# The suite runs in TEST_WORKERS processes (pytest-xdist), each with its own broker, database,
# Redis database and ports (tests/conftest.py); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 4

test: install system-deps
	$(BIN)/python -m pytest -q --clock-shift=365
	$(BIN)/python -m pytest -q --clock-shift=-365
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# Faults under load, each on a fresh load and then all together; fails on a lost notification or an
# unexplained duplicate. Its own PostgreSQL, Redis, broker and sandbox. CHAOS_ARGS="--only sigkill" picks.
chaos: install system-deps
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

# pip-audit in a virtual environment of its own (its dependencies stay out of the project's lock).
AUDIT := .venv-audit
$(AUDIT)/bin/pip-audit:
	$(PYTHON) -m venv $(AUDIT)
	$(AUDIT)/bin/python -m pip install -q --disable-pip-version-check pip-audit==2.10.1

audit: $(AUDIT)/bin/pip-audit
	$(PYTHON) scripts/audit.py --pip-audit $(AUDIT)/bin/pip-audit

# Everything but the suites that start every service as processes and the browser tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser" -n $(TEST_WORKERS)

schemas: install
	$(BIN)/herald schemas

migrate: install
	$(BIN)/herald migrate

topics: install
	$(BIN)/herald topics

# Benchmarks print figures; they never fail on speed. Each starts what it needs on free ports.
# BENCH_ARGS="--quick" for a smoke run, "--profile" for py-spy profiles, "--save-baseline" to store the result.
bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

bench-router: install
	$(BIN)/python scripts/bench_router.py

bench-schedules: install
	$(BIN)/python scripts/bench_schedules.py

bench-email: install
	$(BIN)/python scripts/bench_email.py

# Against a running inapp service (make run): SSE fan-out latency.
bench-inapp: install
	$(BIN)/python -m tests.inapp.bench_fanout --url http://127.0.0.1:$${HERALD_INAPP_PORT:-8106}

lock:
	$(UV) pip compile pyproject.toml --extra test --extra bench -o requirements.lock --python-version 3.11
	$(UV) pip compile pyproject.toml -c requirements.lock -o requirements.runtime.lock --python-version 3.11

clean:
	rm -rf $(VENV) $(AUDIT) .run .artifacts .pytest_cache
