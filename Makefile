# dstream development: `make demo` and `make test` set up what is missing, then run.
#
#   make demo      services + images, then the counter-to-console demo through containers
#   make test      services + images + lint, then the whole test suite
#   make bench     the benchmarks (results in benchmarks/results/)
#   make services  Docker engine, local registry, base image, Azurite, PostgreSQL
#   make images    build every provider image and push it to the local registry
#   make lint      ruff, mypy, actionlint
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REGISTRY ?= 127.0.0.1:5000
# Provider images build on a local Debian base (no Docker Hub needed). With Docker Hub,
# `make images BASE_IMAGE=python:3.12-slim` works too (after `docker pull python:3.12-slim`).
BASE_IMAGE ?= dstream-local/python:bookworm
export DSTREAM_BASE_IMAGE := $(BASE_IMAGE)
export DSTREAM_REGISTRY := $(REGISTRY)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PROVIDERS := $(wildcard providers/*/pyproject.toml)
PYTEST_ARGS ?=

.PHONY: demo test bench services images lint venv clean

demo: venv services images
	$(BIN)/dstream lint
	@# The demo starts from the beginning every time (a task normally resumes from its checkpoint).
	$(BIN)/dstream state reset counter-to-console --yes
	$(BIN)/dstream run counter-to-console

test: venv services images lint
	DSTREAM_REQUIRE_SERVICES=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv services images
	bash scripts/dev/ensure-jq.sh   # the jq CLI, the jq transform's peer
	$(BIN)/python -m benchmarks.run

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PROVIDERS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --group dev -e '.[postgres,azure]' $(patsubst %/pyproject.toml,-e %,$(PROVIDERS))
	@# jq from its sdist with -O2 (PyPI's wheel builds libjq unoptimised); once, kept in build/.
	$(BIN)/python -m dstream.tooling.sourcebuilds install
	touch $@

services:
	bash scripts/dev/up.sh docker registry-auth base azurite postgres odbc

images: venv services
	bash scripts/dev/ensure-jq.sh --compiler   # the jq provider's libjq is built with -O2 (once)
	$(BIN)/dstream providers push --all --orchestrator --build --registry $(REGISTRY)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	bash scripts/dev/actionlint.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
