# `make demo` and `make test` are the whole set-up on a fresh machine:
# each creates (or reuses) .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
STAMP := $(VENV)/.installed

.PHONY: demo test bench image clean system-deps

# the agent alone: what `make demo` needs
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# and the test tools
$(STAMP): $(BASE) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(BASE)
	$(VENV)/bin/nodecache demo

system-deps:
	@bash scripts/system-deps.sh

test: $(STAMP) system-deps
	$(PY) -m pytest -q

# the image, from Debian's packages and locked wheels (no registry): scripts/build-image.sh
# ARCH: amd64, arm64 or "amd64 arm64" (default: this machine's); localhost/nodecache:0.1.0
# is then the manifest list of what was built
image: $(STAMP) system-deps
	PY=$(PY) ARCH="$(ARCH)" bash scripts/build-image.sh

bench: $(STAMP) system-deps
	$(PY) -m bench.results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
