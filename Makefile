# Two entry points for a fresh machine: `make run` and `make test`. Both build the environment
# first. torch is installed alone and first so that nothing later swaps it for another build.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DVC_VENV := .venv-dvc
DVC := $(DVC_VENV)/bin/dvc
DVC_VERSION := 3.67.1
export LLCM_DATA ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(LLCM_DATA)/dagster_home
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: env run test lint bench clean-data ui

env: $(STAMP) $(DVC)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v 'is ignored' || true
	$(BIN)/pip install $(PIP_QUIET) -r requirements.lock 2>&1 | grep -v 'is ignored' || true
	$(BIN)/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e . 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c "import torch, torchvision, diffusers, dagster, mlflow, cleanfid" 
	touch $@

# dvc lives in its own environment: its hydra pins antlr4 4.9, dagster's selection syntax
# needs 4.13 (see README, "Why two environments").
$(DVC):
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install $(PIP_QUIET) dvc==$(DVC_VERSION) 2>&1 | grep -v 'is ignored' || true
	$(DVC) --version

run: env
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster asset materialize -m pipeline.definitions --select '*'
	$(BIN)/llcm report

test: env
	PATH=$(CURDIR)/$(DVC_VENV)/bin:$$PATH $(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: env
	$(BIN)/python benchmarks/ingest_throughput.py

ui: env
	$(BIN)/dagster dev -m pipeline.definitions
