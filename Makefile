# Two entry points for a fresh machine (see README.md); both create .venv and install torch
# (the CPU build 2.13.0 when none is present) and the package first:
#   make demo   - a short CPU training on the built-in photos: sample grids and generator weights in runs/demo
#   make test   - the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test

setup: $(VENV)/.installed

# torch goes in first and pinned: an unpinned torch would pull the CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/tritonsagan-train --out runs/demo --ch 16 --batch-size 16 --steps 200 \
		--log-every 10 --sample-every 50 --save-every 100 --ema-start 100 --ema-decay 0.99
