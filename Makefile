# headhub: two commands on a fresh machine — `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-sqlite lint format migration bench bench-load audit clean

$(STAMP): pyproject.toml $(wildcard setup.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,distill]"
	touch $(STAMP)

## Install and run the whole service on the embedded default (SQLite + local blobs).
run: $(STAMP)
	$(BIN)/headhub up

## Install what the tests need and run the whole suite (SQLite and PostgreSQL).
## tests/console drive Debian's Chromium: installed here when missing (as root; else skipped).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" != 0 ] && echo "NOTICE: no chromium and not root: tests/console are SKIPPED"; } || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/ruff check service extractor migrations tests bench
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

## pip-audit of the installed environment against PyPI's advisories (needs that service; `make
## test` runs it where it answers and checks tests/dependencies/advisories.toml everywhere).
audit: $(STAMP)
	$(BIN)/python -m pip_audit --strict --skip-editable

lint: $(STAMP)
	$(BIN)/ruff check service extractor migrations tests bench
	$(BIN)/ruff format --check service extractor migrations tests bench
	$(BIN)/mypy service extractor

format: $(STAMP)
	$(BIN)/ruff check --fix service extractor migrations tests bench
	$(BIN)/ruff format service extractor migrations tests bench

## Regenerate the single initial migration from the models.
migration: $(STAMP)
	$(BIN)/python -m migrations.regenerate

## Every benchmark; results land in bench/results/ (linked from the README).
bench: $(STAMP)
	$(BIN)/python -m bench

## Load test: predictions at rising concurrency while a training job runs -> bench/results/load.md
bench-load: $(STAMP)
	$(BIN)/python -m bench.load

clean:
	rm -rf $(VENV) .headhub build *.egg-info
