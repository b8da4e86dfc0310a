# EVCharging developer commands.
#
#   make demo                 the whole system on this machine, unattended (Ctrl+C stops it)
#   make test                 install into .venv when needed, then run the test suite
#   make test PYTEST_ARGS='-k kafka -x'
#   make bench                run the benchmarks (protocol, CP link, telemetry, signs of life, secure storm); they print figures
#   make loadgen              2,000 simulated CPs and 500 supplies on one Central for 60 s (about 2 min)
#   make loadgen LOADGEN_ARGS='--monitors 10000 --supplies 1000 --storm'          (about 3 min)
#   make loadgen LOADGEN_ARGS='--monitors 10000 --supplies 1000 --storm --gateways 2'
#   make clean                remove .venv and caches
#
# PYTHON chooses the interpreter that creates .venv (default python3, >= 3.10).

PYTHON ?= python3
PYTEST_ARGS ?=
DEMO_ARGS ?=
LOADGEN_ARGS ?= --monitors 2000 --supplies 500 --seconds 60 --storm

VENV := .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip -q --disable-pip-version-check
# Touched after a successful install; anything newer than it triggers a reinstall.
STAMP := $(VENV)/.evcharging-installed
REQUIREMENTS := requirements.txt requirements-dev.txt pyproject.toml

.DEFAULT_GOAL := test
.PHONY: venv install test demo bench loadgen docker-check clean

venv install: $(STAMP)

$(VENV_PY):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): $(REQUIREMENTS) | $(VENV_PY)
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -e .
	touch $@

test: $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV_PY) scripts/demo.py $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV_PY) benchmarks/bench_protocol.py
	$(VENV_PY) -m benchmarks.bench_cp_link
	$(VENV_PY) -m benchmarks.bench_telemetry
	$(VENV_PY) -m benchmarks.bench_signs_of_life --monitors 5000
	$(VENV_PY) -m benchmarks.bench_secure_storm --cps 2000 --scrypt-cps 200

loadgen: $(STAMP)
	$(VENV_PY) -m benchmarks.loadgen $(LOADGEN_ARGS)

# the Compose plugin (docker compose) when there is one, else docker-compose
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

docker-check:
	$(COMPOSE) --profile interactive -f docker-compose.yml config -q
	$(COMPOSE) --profile gateways -f docker-compose.yml config -q
	for f in deploy/pc*.yml; do $(COMPOSE) --profile interactive --env-file deploy/.env.example -f $$f config -q || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info .ev-test
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
