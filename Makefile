# trainguard developer commands. Two are all a new user needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the local CPU wheel; any other version pulls gigabytes.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[trl,ray,fast,notify,prometheus,dev,tensorboard,mlflow,wandb]"
	touch $(STAMP)

demo: $(STAMP)  ## a real training loop goes wrong and the monitor stops it
	$(BIN)/python examples/demo.py --out artifacts

test: $(STAMP)  ## the whole suite
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## the suite without real trainers
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)  ## speed and memory figures (CPU time), not run by the tests
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check trainguard tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) artifacts .pytest_cache
