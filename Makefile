# Two commands work on a fresh machine: `make demo` and `make test`. Both set up .venv first.
#
# pip runs with PIP_CONFIG_FILE=/dev/null and no find-links: this machine's pip config prefers a
# local CPU-only torch wheel that the registry's torchvision cannot import against, while the
# registry's own torch 2.13.0 works with torchvision 0.28.0 (CPU included).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(PY) -m pip

.PHONY: setup chromium test demo lint bench clean

setup: $(STAMP)

# The browser tests drive Debian's chromium (Playwright cannot download its own browser here).
# Installed when missing: CI runs as root on a fresh machine; elsewhere install it yourself.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests" >&2; exit 1; fi; }
	@chromium --version 2>/dev/null

# Rebuilt only when the lock or the project metadata changes: idempotent and pinned.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.lock
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, ray, pstyle; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

test: setup chromium
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/pstyle demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(VENV)/bin/pstyle bench generator

clean:
	rm -rf $(VENV) runs .pytest_cache
