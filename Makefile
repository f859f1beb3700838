# Two entry points on a fresh machine: `make run` (start a node) and `make test` (everything).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint typecheck kafka js bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## The real pusher-js client for tests/conformance/test_pusher_js.py (Node.js >= 18 and npm).
## Reinstalled when package.json or package-lock.json change.
JS_DIR := tests/conformance/js
JS_STAMP := $(JS_DIR)/node_modules/.installed-stamp

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	npm ci --prefix $(JS_DIR) --no-audit --no-fund
	touch $(JS_STAMP)

js: $(JS_STAMP)

## Start sockudo-node on the embedded log with the development app (ARGS="--port 7000" ...).
run: setup
	$(BIN)/sockudo-node $(ARGS)

## Build the Kafka broker classpath from Maven Central (cached outside the repo). Outside CI a
## failed install only means the Kafka tests skip with a reason; CI requires the broker.
kafka:
	tools/kafka-dev.sh install || [ "$${SOCKUDO_REQUIRE_KAFKA:-0}" != 1 ]

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

## Lint, type-check, then the whole suite (unit, contract, integration, conformance with the
## real pusher-js; real Kafka broker).
test: setup kafka js lint typecheck
	SOCKUDO_KAFKA_AUTO_INSTALL=1 $(BIN)/pytest $(PYTEST_ARGS)

bench: setup kafka
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data $(JS_DIR)/node_modules
