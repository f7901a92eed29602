# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
JARS := .eightbox/jars
EIGHTBOX := $(BIN)/eightbox

.PHONY: setup demo test test-unit bench up down status clean

setup: $(VENV)/.installed $(JARS)/.fetched redis-server

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "Python 3.11 is required (found $$($(PYTHON) --version)); set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing Python packages into $(VENV) (pinned by constraints.txt)"
	@$(BIN)/pip install -q --upgrade pip
	@PYTHONWARNINGS=ignore $(BIN)/pip install -q -c constraints.txt -e '.[dev]'  # quiet setuptools' editable-mode notice
	@# FAISS ships its CPU and GPU builds as two packages of one module: swap where a GPU answers.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "setup: a GPU is present: replacing faiss-cpu with faiss-gpu-cu12"; \
	  $(BIN)/pip uninstall -q -y faiss-cpu && $(BIN)/pip install -q faiss-gpu-cu12==1.14.1.post1; fi
	@touch $@

$(JARS)/.fetched: deploy/pom.xml
	@command -v mvn >/dev/null || { echo "Maven not found: install it (apt-get install maven)"; exit 1; }
	@echo "setup: fetching Kafka and the Flink Kafka connector from Maven Central into $(JARS)"
	@mvn -q -B -f deploy/pom.xml package -Djars.dir=$(CURDIR)/$(JARS)
	@touch $@

redis-server:
	@bash deploy/install_redis.sh

demo: setup
	@$(EIGHTBOX) demo

test: setup
	@$(BIN)/pytest

test-unit: setup
	@$(BIN)/pytest tests/unit

bench: setup
	@$(EIGHTBOX) bench ingest --quick
	@$(EIGHTBOX) bench ann --quick
	@$(EIGHTBOX) bench train --quick

up: setup
	@$(EIGHTBOX) up

down:
	@test -x $(EIGHTBOX) && $(EIGHTBOX) down || true

status:
	@$(EIGHTBOX) status

clean: down
	rm -rf .eightbox/data .eightbox/run .eightbox/lake .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
