# Petri: the two commands.
#   make up     install, make sure Docker runs, build the runtime images, serve on 127.0.0.1:8000
#   make test   install, make sure Docker runs and Chromium is here, build the runtime images,
#               lint, type-check, test
# Every recipe runs under `bash -euo pipefail` and stops at the first failing step.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Steps depend on each other's side effects (installed package, running engine, images).
.NOTPARALLEL:

PYTHON ?= $(shell command -v python 2>/dev/null || command -v python3 2>/dev/null || echo python)
# `python -m gateway` is the `petri` command without depending on where pip put its scripts.
PETRI := $(PYTHON) -m gateway
HOST ?= 127.0.0.1
PORT ?= 8000
# `make up` keeps its state in the checkout unless the environment says otherwise.
PETRI_DATA_DIR ?= $(CURDIR)/var/data
PETRI_WORKSPACE_ROOT ?= $(CURDIR)/var/workspaces
PYTEST_ARGS ?=
GATEWAY_IMAGE ?= petri-gateway:latest

.PHONY: help up test test-fast install docker browser node images lint pytest bench gateway-image

help:
	@echo "make up             install, start Docker if needed, build images, serve on $(HOST):$(PORT)"
	@echo "make test           install, start Docker and get Chromium if needed, build images, ruff, mypy, pytest"
	@echo "make lint           ruff check + mypy"
	@echo "make test-fast      the tests that need no Docker (pytest -m 'not docker'), in seconds"
	@echo "make images         build the runtime images (unchanged ones are skipped)"
	@echo "make bench          run every bench/*.py"
	@echo "make gateway-image  build the gateway's own image ($(GATEWAY_IMAGE))"

install:
	$(PYTHON) -m pip install -e '.[dev]'

docker:
	bash scripts/ensure-docker.sh

# Debian's chromium, which the dashboard tests drive through Playwright (no browser download).
browser:
	bash scripts/ensure-browser.sh

# Node.js >= 20 (Debian's nodejs), which runs the JavaScript client's tests (`node --test`).
node:
	bash scripts/ensure-node.sh

images: docker
	$(PETRI) images build

up: install docker images
	mkdir -p '$(PETRI_DATA_DIR)' '$(PETRI_WORKSPACE_ROOT)'
	PETRI_DATA_DIR='$(PETRI_DATA_DIR)' PETRI_WORKSPACE_ROOT='$(PETRI_WORKSPACE_ROOT)' \
		exec $(PETRI) serve --host '$(HOST)' --port '$(PORT)'

lint:
	$(PYTHON) -m ruff check gateway petri_sdk tests scripts
	$(PYTHON) -m mypy gateway petri_sdk
	$(PYTHON) scripts/gen_sync_sdk.py --check

# pytest exits 5 when it collected no tests: that is a failure here like any other non-zero.
pytest:
	$(PYTHON) -m pytest -q -ra tests $(PYTEST_ARGS)

test: install docker browser node images lint pytest

# No engine needed (tests/conftest.py marks every test that drives one `docker`, and points
# the rest at a Docker host that does not exist): unit tests, the domain and the HTTP layer
# over tests/fake_backend.py.
test-fast:
	DOCKER_HOST=unix:///nonexistent/docker.sock $(PYTHON) -m pytest -q -m "not docker" tests $(PYTEST_ARGS)

bench:
	shopt -s nullglob; scripts=(bench/[!_]*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "make bench: no bench/*.py found" >&2; exit 1; fi; \
	for script in "$${scripts[@]}"; do \
		[ "$$script" = bench/chart.py ] && continue; \
		echo "== $$script"; \
		$(PYTHON) "$$script"; \
	done; \
	$(PYTHON) bench/chart.py  # docs/benchmarks.png from bench/results/*.json

# The gateway's own image (see Dockerfile), built from a temporary context that holds only
# what the image needs plus the CA bundle pip must trust (PETRI_CA_BUNDLE, else the system's).
# Base: as for the runtime images (PETRI_BASE_IMAGE, debian:trixie-slim, petri-base:trixie).
gateway-image: docker
	ctx="$$(mktemp -d)"; trap 'rm -rf "$$ctx"' EXIT; \
	cp -a Dockerfile .dockerignore pyproject.toml README.md gateway petri_sdk runtimes "$$ctx"/; \
	bundle="$${PETRI_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"; \
	if [ -f "$$bundle" ]; then cp "$$bundle" "$$ctx/ca-bundle.crt"; fi; \
	base="$$($(PYTHON) -c 'import sys; from gateway.images import ensure_base; \
		print(ensure_base(lambda line: print(line, file=sys.stderr)))')"; \
	echo "building $(GATEWAY_IMAGE) from $$base"; \
	DOCKER_BUILDKIT=0 docker build --build-arg BASE="$$base" -t '$(GATEWAY_IMAGE)' "$$ctx"
