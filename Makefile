# Two entry points for a fresh machine (see README.md); both create .venv and install torch
# (the CPU build 2.13.0 when none is present) and the package first:
#   make demo   - a short class-conditional training on the built-in photos (each photo a class),
#                 then a grid of each class beside the shipped weights' grid, the attention-map figure
#                 of each, and the demo's own model card (its photo match), all in runs/demo
#   make test   - ruff's linter and format check, the test suite, then the kernel tests and the Hopper compile check again under
#                 triton 3.6, the oldest the kernels support, in a second environment, .venv-triton36
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GPU_TRITON ?= 3.6.0
VENV_GPU_TRITON ?= .venv-triton36
PY_GPU_TRITON := $(VENV_GPU_TRITON)/bin/python
KERNEL_TESTS := tests/test_attention_triton.py tests/test_spectral_norm_triton.py tests/test_compile_check.py

.PHONY: setup setup-gpu-triton demo test

setup: $(VENV)/.installed

setup-gpu-triton: $(VENV_GPU_TRITON)/.installed

# torch goes in first and pinned: an unpinned torch would pull the CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The oldest supported triton beside the CPU torch; its interpreter calls int() on 0-d arrays, which
# numpy >= 2.4 refuses.
$(VENV_GPU_TRITON)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_GPU_TRITON)
	$(PY_GPU_TRITON) -m pip install -q --upgrade pip
	$(PY_GPU_TRITON) -c "import torch" 2>/dev/null || $(PY_GPU_TRITON) -m pip install -q torch==2.13.0
	$(PY_GPU_TRITON) -m pip install -q triton==$(GPU_TRITON) 'numpy<2.4'
	$(PY_GPU_TRITON) -m pip install -q -e '.[test]'
	touch $@

test: setup setup-gpu-triton
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q
	$(PY_GPU_TRITON) -m pytest -q $(KERNEL_TESTS)

# The demo: on a CPU the learning benchmark's recipe (64x64, ch 16, batch 16, no DiffAugment) for 600
# steps or at most 6 minutes of training, whichever ends first (it stops at the first log step after
# 5.5 minutes: a slower CPU stops short, and make demo again goes on); on a CUDA machine the defaults
# (128x128, ch 64, batch 256, compile, bf16 where the GPU has it) for 4 minutes.
# HAS_CUDA is read once the environment exists.
DEMO_CPU := --image-size 64 --ch 16 --batch-size 16 --diffaug '' --steps 600 --max-minutes 5.5 --log-every 20 --sample-every 100 --save-every 200 --ema-start 200 --ema-decay 0.99
DEMO_CUDA := --steps 20000 --max-minutes 4 --log-every 50 --sample-every 500 --save-every 500 --ema-start 500 --ema-decay 0.999
HAS_CUDA = $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
# The weights shipped in the package, when there: their class grid beside the demo's, their attention figure.
SHIPPED := builtin-photos-64
SHIPPED_DEMO := $(if $(wildcard tritonsagan/pretrained/$(SHIPPED)/model.safetensors),$(SHIPPED))

# tests/test_readme_examples.py runs these commands (at tiny sizes) from `make -n demo`.
demo: setup
	$(VENV)/bin/tritonsagan-train --out runs/demo --conditional $(if $(filter 1,$(HAS_CUDA)),$(DEMO_CUDA),$(DEMO_CPU))
	$(VENV)/bin/tritonsagan-generate --weights runs/demo $(SHIPPED_DEMO) --class-per-row --n 136 --out runs/demo/classes.png
	$(VENV)/bin/tritonsagan-generate --weights runs/demo --n 3 --attention-maps --out runs/demo/attention.png
	$(if $(SHIPPED_DEMO),$(VENV)/bin/tritonsagan-generate --weights $(SHIPPED_DEMO) --n 3 --attention-maps --out runs/demo/attention_$(SHIPPED_DEMO).png)
	$(VENV)/bin/tritonsagan-export runs/demo --out runs/demo/export --kid-n 0
