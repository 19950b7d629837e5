# featlab: the two commands a fresh machine needs are `make notebooks` and `make test`.
# Both create .venv if missing. torch is pinned here (CI and this lab's machines); the
# package itself only sets lower bounds (pyproject.toml).
# .venv gets the lab extra (JupyterLab, papermill: `make lab`, `make notebooks`) and the test extra.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
SHARED_DATA ?= ../shared/data/prepare.py
# Data root: $FEATLAB_DATA if set; else .cache/data, written from ../shared/data when present
# (offline lab machines), else downloaded by torchvision on first use.
export FEATLAB_DATA ?= $(CURDIR)/.cache/data

.PHONY: setup data notebooks test test-all test-fast lab bench gpu-check gpu-cifar clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[lab,test]' $(TORCH_PIN)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

data: setup
	@if [ -f "$(SHARED_DATA)" ]; then $(PY) $(SHARED_DATA) "$(FEATLAB_DATA)"; \
	else echo "no $(SHARED_DATA): featlab will download into $(FEATLAB_DATA) on first use"; fi

## main job: execute every notebook with its default parameters -> build/*.ipynb and build/*.html
notebooks: data
	$(VENV)/bin/featlab notebooks --out build

## tests (what .ci/run runs): everything but the tests marked heavy
test: data
	$(PY) -m pytest -ra --durations=15 -m "not heavy"

## every test, the heavy ones too (the four CIFAR-10 notebooks trained from scratch: about 13 min more on 2 cores without
## native bf16, measured with ONEDNN_MAX_CPU_ISA=AVX2 FEATLAB_CPU_BF16=0)
test-all: data
	$(PY) -m pytest -ra --durations=15

test-fast: data
	$(PY) -m pytest -ra -m "not slow"

lab: data
	$(VENV)/bin/jupyter lab notebooks/

bench: data
	$(PY) bench/attack_speed.py
	$(PY) bench/train_speed.py

## the CUDA path, on a GPU machine (<= 8 min on one H100); says so and exits 0 without CUDA
gpu-check: data
	$(PY) bench/gpu_check.py

## CIFAR-10 on a GPU machine: PreAct ResNet-18 PGD-AT inside a wall budget, then PGD-20 and AutoAttack on 1,000 images
gpu-cifar: data
	$(PY) bench/gpu_cifar.py

clean:
	rm -rf build .pytest_cache
