# Two commands a newcomer needs: `make run` (the whole pipeline, offline) and `make test`.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-gpu env clean

$(STAMP): pyproject.toml constraints.txt setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 resolves to the local CPU build here; unpinned torch pulls CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m massact.run --fast $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# pytest-benchmark on bench/; rows appended to bench/results.jsonl, bench/RESULTS.md regenerated
# (ARGS: --quick, -k EXPR, --results PATH, ...; see bench/__main__.py)
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# On a CUDA machine, also one without network (no venv is built): the kernel tests incl. the
# CUDA-only (gpu-marked) cases, then the CUDA benchmarks; see bench/gpu.sh (PY=... picks Python)
bench-gpu:
	bash bench/gpu.sh $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
