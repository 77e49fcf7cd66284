# Every target creates or reuses the virtual environment in $(VENV): on a fresh
# machine `make serve` and `make test` are the only set-up commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: setup serve test client-test store-server lint format docs train export bench soak scale-test ui-test compare-horizons docker-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# Serving needs only the runtime dependencies; tests, lint and training need the extras.
$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# KServe's SDK without its dependencies (a model server's worth, pinned apart from ours): its models check
# deploy/kubernetes/kserve in tests/test_kubernetes.py. A stamp of its own: changing the pin reinstalls it.
KSERVE_SDK := kserve==0.21.0

$(VENV)/.dev-deps: pyproject.toml client/pyproject.toml $(VENV)/.kserve-sdk-$(KSERVE_SDK) | $(BIN)/python
	$(PIP) -e '.[train,dev]' -e './client[websocket,grpc]'
	touch $@ $(VENV)/.serve-deps

$(VENV)/.kserve-sdk-$(KSERVE_SDK): | $(BIN)/python
	rm -rf $(VENV)/kserve-sdk $(VENV)/.kserve-sdk-*
	$(PIP) --no-deps --target $(VENV)/kserve-sdk '$(KSERVE_SDK)'
	touch $@

# A Debian package where apt-get can (root), refreshing the package lists once if the install fails.
APT_INSTALL = [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	{ apt-get install -y -qq --no-install-recommends $(1) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(1) >/dev/null 2>&1; }; }

setup: $(VENV)/.dev-deps

serve: $(VENV)/.serve-deps
	$(BIN)/python -m service

# The shared sequence store's tests run against a real Valkey or Redis: Debian's redis-server, installed
# here where apt-get can (root); elsewhere those tests are skipped and say why.
test: $(VENV)/.dev-deps store-server client-test
	$(BIN)/python -m pytest

# The client on its own: one pip install from the repository into a virtual environment without the server,
# then its own tests there (client/tests), against the installed package.
CLIENT_VENV := $(abspath $(VENV))-client
client-test: $(CLIENT_VENV)/.installed
	cd client && $(CLIENT_VENV)/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("service") is not None)'  # no server here
	cd client/tests && $(CLIENT_VENV)/bin/pytest -q -c ../pyproject.toml

$(CLIENT_VENV)/.installed: client/pyproject.toml $(wildcard client/lstm_client/*)
	[ -x $(CLIENT_VENV)/bin/python ] || $(PYTHON) -m venv $(CLIENT_VENV)
	rm -rf client/build
	$(CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./client
	$(CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check './client[test]'
	touch $@

store-server:
	@command -v valkey-server >/dev/null || command -v redis-server >/dev/null || \
	{ $(call APT_INSTALL,redis-server) || \
	  echo "no valkey-server or redis-server: the shared-store tests will be skipped (apt-get install redis-server)"; }

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service training client/lstm_client
	$(BIN)/hadolint Dockerfile docker/train.Dockerfile docker/valkey.Dockerfile

format: $(VENV)/.dev-deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The settings table, generated from service/settings.py (tests/test_docs.py checks it is current).
docs: $(VENV)/.serve-deps
	$(BIN)/python -m service.settings > docs/settings.md

# The default model: `make train export` reproduces models/seattle-weather/1 from data/.
train: $(VENV)/.dev-deps
	$(BIN)/python -m training train
	$(BIN)/python -m training train --horizons 7 --out artifacts/seattle-weather-h7

export: $(VENV)/.dev-deps
	$(BIN)/python -m training export
	$(BIN)/python -m training export --checkpoint artifacts/seattle-weather-h7/checkpoint.pt --version 3

# The roll-out that the direct head of version 3 was measured against (docs/model.md): its per-horizon scores.
compare-horizons: $(VENV)/.dev-deps
	$(BIN)/python -m training train --horizons 7 --head rollout --targets precipitation,temp_max,temp_min,wind \
		--out artifacts/seattle-weather-rollout --no-plots

# Throughput and latency against the floors and a naive baseline (bench/run.py); needs wrk.
bench: $(VENV)/.dev-deps
	@command -v wrk >/dev/null || { echo "installing wrk (Debian)"; apt-get install -y -qq wrk >/dev/null || \
		{ echo "make bench needs wrk: apt-get install wrk"; exit 1; }; }
	$(BIN)/python -m bench.run

# 60 s at about twice the measured capacity (bench/soak.py); needs wrk.
soak: $(VENV)/.dev-deps
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || { echo "make soak needs wrk"; exit 1; }
	$(BIN)/python -m bench.soak

# Builds the images and runs the compose stack on a real Docker engine (../shared/docker); not in `make test`.
# Replicas behind HAProxy with a shared Valkey (deploy/fleet.py): streams survive a replica killed mid-way,
# then throughput with 1, 2 and 3 replicas (bench/results/scale.md).
scale-test: $(VENV)/.dev-deps store-server
	@command -v haproxy >/dev/null || { $(call APT_INSTALL,haproxy); } || \
		{ echo "make scale-test needs haproxy: apt-get install haproxy"; exit 1; }
	$(BIN)/python -m pytest -m scale tests/scale
	$(BIN)/python -m bench.scale

# The page at /ui in a real browser: Debian's Chromium, driven by Playwright (it cannot download browsers here).
ui-test: $(VENV)/.dev-deps
	@command -v chromium >/dev/null || { $(call APT_INSTALL,chromium); } || \
		{ echo "make ui-test needs Debian's chromium: apt-get install chromium"; exit 1; }
	$(PIP) 'playwright>=1.45'
	$(BIN)/python -m pytest -m ui tests/ui

docker-test: $(VENV)/.dev-deps
	PYTHON=$(BIN)/python docker/test.sh

clean:
	rm -rf $(VENV) $(CLIENT_VENV) .pytest_cache .mypy_cache .ruff_cache
