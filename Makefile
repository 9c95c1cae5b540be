# bnlab developer commands. `make setup` works offline on a fresh clone here:
# the CPU torch wheel comes from the local disk (TORCH_SPEC), the rest from PyPI.
# GPU users: `make setup TORCH_SPEC=` keeps pip from touching torch beyond the
# range in pyproject.toml (install your CUDA build first, or use VENV_FLAGS=--system-site-packages).

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test test-all lint format train-cpu bench clean data-fmnist

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install --disable-pip-version-check -q "$(TORCH_SPEC)"; fi
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev,wandb]'
	touch $@

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m "not gpu"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train-cpu: setup
	$(BIN)/bnlab train preset=cpu

bench: setup
	$(BIN)/python scripts/bench_throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Fashion-MNIST from Debian (root needed); the loader finds it in /usr/share/datasets.
data-fmnist:
	@test -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
