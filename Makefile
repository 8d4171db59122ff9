# Two commands work on a fresh machine (README): `make run` and `make test`.
# Each installs what it needs: a .venv in the checkout, and (as root) missing apt packages.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Debian packages: test audio (espeak-ng, ffmpeg, sox), the monitoring stack the tests run
# for real (prometheus, alertmanager, node-exporter), and docker-compose to validate the
# compose file without an engine; PostgreSQL, which the shared-state tests start themselves; chromium,
# the real browser the web console's tests drive (tests/test_console_browser.py).
TEST_APT := espeak-ng ffmpeg sox prometheus prometheus-alertmanager prometheus-node-exporter docker-compose postgresql chromium
# CPU torch for the optional engines. FunASR's frontend needs torchaudio, which on this
# platform pairs with torch 2.9.1 (torchvision first, then torchaudio, so that pip never
# swaps torch for a newer build).
TORCH_PAIR := torch==2.9.1 torchvision==0.24.1
TORCHAUDIO := torch==2.9.1 torchaudio==2.9.1
# checkov (the policy scan of deploy/kubernetes) pins many packages of its own: its own venv.
TOOLS := .venv-tools
CHECKOV := checkov==3.3.30

.PHONY: run test lint unit bench bench-overhead stack apt-test config-docs clean

run: $(VENV)/.core
	$(PY) -m service serve

test: apt-test $(VENV)/.full $(TOOLS)/.checkov
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.full
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: $(VENV)/.full
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: apt-test $(VENV)/.full
	$(PY) -m bench.run_all

bench-overhead: $(VENV)/.full
	$(PY) -m bench.overhead

# Prometheus, Alertmanager and node-exporter on loopback with deploy/'s configs, no Docker.
stack: apt-test $(VENV)/.full
	$(PY) -m deploy.local_stack

config-docs: $(VENV)/.core
	$(PY) -m service config

$(VENV)/.python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	touch $@

# The core install, as a user's `pip install .`: tests/test_install_paths.py runs this very recipe in a
# fresh venv and serves from it, so `make run` stays a tested path.
$(VENV)/.core: $(VENV)/.python pyproject.toml
	$(PIP) install .
	touch $@

$(VENV)/.full: $(VENV)/.core pyproject.toml
	$(PIP) install $(TORCH_PAIR)
	$(PIP) install $(TORCHAUDIO)
	$(PIP) install -e '.[dev,sensevoice,openai-whisper,postgres,diarization]' $(TORCHAUDIO)
	touch $@

$(TOOLS)/.checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip --disable-pip-version-check -q install $(CHECKOV)
	touch $@

apt-test:
	@missing=$$(for p in $(TEST_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages (install them as root): $$missing" >&2; exit 1; \
	  fi; \
	fi
	@# kubectl renders the kustomize overlays; the CI image has one (with kustomize v5), and
	@# Debian's kubernetes-client is the fallback where none is installed.
	@command -v kubectl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
