# BioFlexNet: `make demo` reproduces the quick profile, `make test` runs the tests.
# Both create .venv (Python >= 3.11) and install the project on first use.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= $(or $(BIOFLEXNET_DATA_DIR),data)
STAMP   = $(VENV)/.installed
# CPU wheel of torch (on disk on this project's machines; any torch >= 2.2 works elsewhere)
TORCH_SPEC ?= torch==2.13.0

export BIOFLEXNET_DATA_DIR := $(abspath $(DATA))

.PHONY: demo claims test test-all test-cuda bench install data clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q "torch>=2.2"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# CIFAR-10: prepared from ../shared/data where that exists (this project's machines and CI),
# else the official archive is downloaded (checksum verified) on first use.
SHARED_CIFAR = ../shared/data/cifar10/prepare_cifar10.py
data: $(STAMP)
	@if [ ! -f "$(DATA)/cifar-10-batches-py/test_batch" ] && [ -f $(SHARED_CIFAR) ]; then \
		echo "preparing CIFAR-10 from $(SHARED_CIFAR)"; $(PY) $(SHARED_CIFAR) "$(DATA)"; fi
	$(PY) -c 'from training.data import load_split; load_split("test"); load_split("train")'

demo: $(STAMP) data
	$(VENV)/bin/bioflexnet reproduce --profile quick --out runs/quick

# The claims table: the six variants and the ablations with 3 seeds (reuses the demo's seed-0 runs)
SEEDS ?= 0 1 2
claims: $(STAMP) data
	$(VENV)/bin/bioflexnet reproduce --profile quick --out runs/quick --seeds $(SEEDS) --ablations

test: $(STAMP) data
	$(PY) -m pytest -q

test-all: $(STAMP) data
	$(PY) -m pytest -q -m "not gpu"

# brian2cuda (GPL-3.0, optional; pins brian2 2.8 on Python 3.11) and the full CUDA build of a small
# network: ~10 min of nvcc on 2 cores, so not part of `make test`; runs the project too where a GPU is.
test-cuda: $(STAMP) data
	$(PY) -m pip install -q -e ".[cuda]"
	$(PY) -m pytest -q -m nvcc tests/test_sim_devices.py

# Brian2 devices side by side on the demo's flex-stbp export (run `make demo` first); prints medians
BENCH_RUN ?= runs/quick/flex-stbp/seed0
bench: $(STAMP)
	$(PY) -m sim.benchmark $(BENCH_RUN) --images 50 --repeats 3 --devices runtime cpp_standalone

clean:
	rm -rf runs .pytest_cache
