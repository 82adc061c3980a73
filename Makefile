# BioFlexNet: `make demo` reproduces the quick profile, `make test` runs the tests.
# Both create .venv (Python >= 3.11) and install the project on first use.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= $(or $(BIOFLEXNET_DATA_DIR),data)
STAMP   = $(VENV)/.installed
# CPU wheel of torch (on disk on this project's machines; any torch >= 2.2 works elsewhere)
TORCH_SPEC ?= torch==2.13.0
# snnTorch and Norse export NIR graphs that tests/test_nir.py simulates in Brian2 (nirtorch traces their modules).
# --no-deps: Norse declares torchvision, which would replace the CPU torch; snnTorch and nirtorch need only torch + nir.
NIR_PEERS ?= snntorch==1.0.0 nirtorch==2.6 norse==1.1.0

export BIOFLEXNET_DATA_DIR := $(abspath $(DATA))

.PHONY: demo claims test test-all test-cuda bench gpu-check install data clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q "torch>=2.2"
	$(PY) -m pip install -q -e ".[test]"
	for peer in $(NIR_PEERS); do $(PY) -m pip install -q --no-deps $$peer || echo "$$peer could not be installed; its NIR round-trip test skips"; done
	touch $(STAMP)

install: $(STAMP)

# CIFAR-10: located, else prepared from ../shared/data where that exists (this project's machines and CI),
# else the official archive is downloaded (checksum verified); then every file is loaded and checked.
data: $(STAMP)
	$(VENV)/bin/bioflexnet data --data-dir "$(DATA)"

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

# Benchmarks (not tests), each measured side by side in interleaved rounds, medians and ratios; the tables
# are printed and written to $(BENCH_OUT)/bench.txt. Training step: BioFlexNet vs SpikingJelly and snnTorch
# on the same SNN, FLEX vs VGG per mode at the quick profile's size and at the paper's (VGG16 width 1, batch 32,
# no memory runs), STBP vs T x ANN, peak memory. Brian2: runtime vs cpp_standalone on
# the demo's flex-stbp export (or, without `make demo`, a smoke run trained here), build cached across calls.
# The peers install with --no-deps: their declared dependencies would replace the CPU torch with a CUDA one.
BENCH_PEERS ?= spikingjelly==2.0.0 snntorch==1.0.0 loguru==0.7.3
BENCH_OUT   ?= runs/bench
BENCH_RUN   ?= $(if $(wildcard runs/quick/flex-stbp/seed0/checkpoint.pt),runs/quick/flex-stbp/seed0,$(BENCH_OUT)/flex-stbp-smoke)
bench: $(STAMP) data
	$(PY) -m pip install -q --no-deps $(BENCH_PEERS) || echo "peers could not be installed; the table omits them"
	mkdir -p $(BENCH_OUT)
	OMP_NUM_THREADS=1 $(PY) -m bioflexnet.bench_training --out $(BENCH_OUT)/training_step.txt
	OMP_NUM_THREADS=1 $(PY) -m bioflexnet.bench_training --arch vgg16 --width 1 --batch 32 --rounds 5 --no-memory \
		--only ann hybrid stbp --out $(BENCH_OUT)/training_step_vgg16.txt
	test -f $(BENCH_RUN)/checkpoint.pt || $(VENV)/bin/bioflexnet train --profile smoke --mode stbp --flex --device cpu --out $(BENCH_RUN)
	test -f $(BENCH_RUN)/export.npz || $(VENV)/bin/bioflexnet export $(BENCH_RUN) --images 50
	$(PY) -m bioflexnet.bench_sim $(BENCH_RUN) --images 50 --repeats 3 --devices runtime cpp_standalone | tee $(BENCH_OUT)/brian2.txt
	cat $(BENCH_OUT)/training_step.txt $(BENCH_OUT)/training_step_vgg16.txt $(BENCH_OUT)/brian2.txt > $(BENCH_OUT)/bench.txt
	@echo "tables written to $(BENCH_OUT)/bench.txt"

# The prepared GPU session (training/gpucheck.py): Brian2 cuda_standalone vs runtime spike agreement, VGG16 T=10
# bf16 training images/s (flex, vgg) with the 120-epoch projection, and a short GPU run, in <= 8 minutes.
# `make gpu-check DRY=1` runs every code path at tiny size on the CPU. On a GPU machine the venv needs a CUDA
# torch (e.g. `make gpu-check TORCH_SPEC=torch` on a fresh venv where pip's default torch is a CUDA build).
gpu-check: $(STAMP) data
ifeq ($(DRY),1)
	$(PY) -m bioflexnet.gpucheck --dry-run --out runs/gpu-check-dry
else
	$(PY) -m pip install -q -e ".[cuda]"
	$(PY) -m bioflexnet.gpucheck --out runs/gpu-check
endif

clean:
	rm -rf runs .pytest_cache
