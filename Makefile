# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast browsers services docs benchmark clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,docs]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cxrad demo --out runs/demo

# Debian's Chromium for the browser tests (report screenshot, dashboard end to end). Installing needs root;
# without it (or without Chromium) those tests are skipped with the reason and the rest runs.
browsers:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core \
	      >/dev/null || echo "could not install chromium: the browser tests will be skipped"; \
	  else echo "chromium is missing and installing it needs root: the browser tests will be skipped"; fi; }

# Debian's Orthanc (a real PACS) and PostgreSQL for the screening node's integration tests, all on loopback.
# Installing needs root; without it (or without them) those tests are skipped with the reason.
services:
	@{ [ -x /usr/sbin/Orthanc ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      orthanc postgresql >/dev/null || echo "could not install orthanc and postgresql: their tests will be skipped"; \
	  else echo "orthanc or postgresql is missing and installing them needs root: their tests will be skipped"; fi; }

test: $(STAMP) browsers services
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider -m "not browser and not slow"

# The documentation site with the API reference; --strict fails on a broken link or reference.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

benchmark: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py --out benchmarks/results

clean:
	rm -rf $(VENV) runs .pytest_cache build
