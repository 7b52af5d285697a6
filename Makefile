# driftgate — the two README commands (`make demo`, `make test`) bootstrap
# everything they need on a fresh machine: a .venv with the project and its dev
# extra, plus the Debian packages the integration tests start (when missing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.driftgate-installed
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck layers unit bench system-deps venv clean

$(STAMP): pyproject.toml setup.py $(wildcard monitor/ingest/_native/*.c third_party/yyjson/*)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash .ci/install-system-deps

demo: $(STAMP)
	$(BIN)/driftgate demo $(DEMO_ARGS)

# every Python folder of the project; third_party/ (vendored C) is not ours to lint
CHECKED := monitor detectors rollback tests benchmarks grafana

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED)

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(CHECKED)

# the layering contract in pyproject.toml ([tool.importlinter]): no import
# cycles, detectors below everything, the sandbox on top
layers: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration" $(PYTEST_ARGS)

test: $(STAMP) system-deps lint typecheck layers
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
