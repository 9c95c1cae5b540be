# bnlab developer commands. `make setup` works offline on a fresh clone here:
# the CPU torch wheel comes from the local disk (TORCH_SPEC), the rest from PyPI.
# GPU users: `make setup TORCH_SPEC=` keeps pip from touching torch beyond the
# range in pyproject.toml (install your CUDA build first, or use VENV_FLAGS=--system-site-packages).

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test test-e2e test-all lint format train-cpu bench clean data-fmnist slurm-packages test-slurm wheelhouse

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install --disable-pip-version-check -q "$(TORCH_SPEC)"; fi
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev,wandb]'
	touch $@

# pytest-xdist: one worker per core, at most 4. The suite is mostly single-threaded
# (process starts, Hydra composition, small models), so 2 workers on the 2-core CI machine
# took 13 min against 17-19 min serially. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --maxprocesses 4

# make test: the fast tests (minutes). The end-to-end ones (real processes: killed sweeps,
# launchers, resumes, the GPU smoke sequence) are marked e2e and run by make test-e2e,
# which .ci/run runs after it.
test: setup
	$(BIN)/pytest -q $(XDIST)

test-e2e: setup
	$(BIN)/pytest -q $(XDIST) -m e2e --durations=15

test-all: setup
	$(BIN)/pytest -q $(XDIST) -m "not gpu and not slurm"

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

# Wheels for the GPU machine (CPython 3.12, manylinux x86-64, no network there): what bnlab
# needs that its image lacks (it has torch, torchvision, numpy, typer, rich, pandas,
# matplotlib, joblib, cloudpickle, pyyaml), one version each -- the ones installed in
# $(VENV), so the GPU runs the versions tested here. antlr4-python3-runtime is published
# as an sdist only: built into a (pure-Python) wheel here. wandb is left out (optional, 20+
# MB with its dependencies; the GPU runs log to the CSV store). Then installed into a fresh
# --target and imported from it (scripts/check_wheelhouse.py). README: "On a GPU".
WHEELHOUSE ?= wheelhouse
GPU_WHEELS := hydra-core omegaconf hydra-joblib-launcher hydra-submitit-launcher submitit
GPU_SDISTS := antlr4-python3-runtime
PIN = $(shell $(BIN)/python -c "import importlib.metadata as m, sys; \
	print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $(1))

wheelhouse: setup
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
		-d $(WHEELHOUSE) $(call PIN,$(GPU_WHEELS))
	$(BIN)/pip wheel -q --disable-pip-version-check --no-deps -w $(WHEELHOUSE) \
		$(call PIN,$(GPU_SDISTS))
	$(BIN)/python scripts/check_wheelhouse.py $(WHEELHOUSE)

# Debian's SLURM and MariaDB (its accounting) for the real-SLURM tests; root and apt-get
# needed. policy-rc.d keeps the packages from starting daemons: the tests start their own.
SLURM_PACKAGES := slurmctld slurmd slurm-client slurmdbd mariadb-server
slurm-packages:
	@command -v slurmctld >/dev/null && command -v mariadbd >/dev/null || { \
		test "$$(id -u)" = 0 && command -v apt-get >/dev/null || { \
			echo "installing $(SLURM_PACKAGES) needs root and apt-get"; exit 1; }; \
		made=; [ -e /usr/sbin/policy-rc.d ] || { made=1; \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq $(SLURM_PACKAGES) || \
			{ apt-get update -qq && apt-get install -y -qq $(SLURM_PACKAGES); }; } >/dev/null; \
		rc=$$?; [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; }

# The real-SLURM tests (tests/test_slurm.py -m slurm): a single-node cluster in a temp folder.
test-slurm: setup
	@$(MAKE) --no-print-directory slurm-packages || { \
		echo "SLURM could not be installed: the real-SLURM tests are skipped"; exit 0; }; \
	$(BIN)/pytest -q -m slurm tests/test_slurm.py
