# Singular Learning Theory, by running it -- the two commands:
#   make book   build the HTML book (every notebook executed full size) into _build/html
#   make test   package tests + every notebook executed once (SLT_QUICK=1) + a quick -W build of those
#               executions + browser tests
# Also: make serve (serve _build/html on 127.0.0.1:8000), make bench, make clean.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
JB     := $(VENV)/bin/jupyter-book
PORT   ?= 8000
export SLT_CACHE_DIR ?= $(CURDIR)/_build/slt_cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup assets chromium malloc book test quick-book serve bench clean

help:
	@echo "make book   build the book into _build/html (creates .venv on first use)"
	@echo "make test   run every test (SLT_QUICK=1), under 10 minutes on 2 cores"
	@echo "make serve  serve _build/html on http://127.0.0.1:$(PORT)"
	@echo "make bench  run benchmarks/ (this package vs devinterp, side by side)"

# (Re)create .venv when it is missing or requirements.txt / pyproject.toml changed since it was made.
setup:
	@want=$$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1); \
	have=$$(cat $(VENV)/.requirements-hash 2>/dev/null || true); \
	if [ ! -x $(PY) ] || [ "$$want" != "$$have" ]; then \
	  echo "setup: installing requirements into $(VENV)"; \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet -r requirements.txt; \
	  $(PY) -m pip check; \
	  echo "$$want" > $(VENV)/.requirements-hash; \
	fi

# MathJax, the ipywidgets embed manager and require.js, pinned in book/_vendor/assets.lock.json.
assets: setup
	@$(PY) book/_vendor/fetch_assets.py

# Debian's Chromium for the browser tests (never `playwright install`).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium: installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium: not found. Install it (Debian/Ubuntu: sudo apt-get install -y chromium) or set CHROMIUM=/path/to/chrome; the browser tests will fail without it."; \
	  fi; \
	fi

# tcmalloc (Debian's libtcmalloc-minimal4) for the pages' kernels: the same numbers, the book's work 1.13-1.19x faster
# (slt_companion/allocator.py, benchmarks/allocator.py). Optional: without it the pages run on glibc's malloc.
malloc: setup
	@if ! $(PY) -m slt_companion.allocator --check; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "malloc: installing Debian's libtcmalloc-minimal4 for the pages' kernels"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } || true; \
	  fi; \
	  $(PY) -m slt_companion.allocator >/dev/null || true; \
	fi

# Clear the notebook execution cache when the package or the pins change (jupyter-cache hashes code cells only).
_build/.package-hash: FORCE
	@mkdir -p _build
	@h=$$(cat requirements.txt $$(find slt_companion -name '*.py' | sort) | sha256sum | cut -d' ' -f1); \
	if [ "$$h" != "$$(cat $@ 2>/dev/null || true)" ]; then \
	  [ ! -d _build/.jupyter_cache ] || echo "book: slt_companion/ or requirements.txt changed; clearing the execution cache"; \
	  rm -rf _build/.jupyter_cache; echo "$$h" > $@; \
	fi
FORCE:

# Every notebook page is executed once by tests/nbexec.py (kernels over IPC, a per-cell timeout that reports
# the kernel's stack) into the cache jupyter-book reads; the build then renders and starts no kernel itself.
book: assets malloc _build/.package-hash
	@$(PY) tests/nbexec.py --cache _build/.jupyter_cache --jobs auto
	@$(JB) build -W --keep-going . || { \
	  echo "=== book build failed; per-page execution reports: ==="; \
	  for f in _build/html/reports/*.log; do [ -f "$$f" ] && { echo "--- $$f"; tail -n 60 "$$f"; }; done; exit 1; }
	@$(PY) tests/notebooks.py exec-table _build --record full
	@echo "book: open _build/html/index.html, or run 'make serve'"

test: assets chromium malloc
	SLT_QUICK=1 $(PY) -m pytest tests

serve:
	@test -f _build/html/index.html || { echo "no built book: run 'make book' first"; exit 1; }
	$(PYTHON) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf _build
