# Two set-up commands: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines get the CPU wheel of torch; machines with an NVIDIA driver get the normal CUDA wheel.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.11,<2.15" || echo "torch==2.13.0")
RECIPE ?= recipes/tiny/pipeline.yaml
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install deepspeed test demo sft dpo pipeline export bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

deepspeed: install
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed>=0.19,<0.20"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The demo starts afresh each time: it replaces an earlier demo run in runs/demo (the stages refuse that otherwise).
demo: install
	$(PY) -m align pipeline recipes/tiny/pipeline.yaml --overwrite_output_dir $(ARGS)

sft: install
	$(PY) -m align sft $(RECIPE) $(ARGS)

dpo: install
	$(PY) -m align dpo $(RECIPE) $(ARGS)

pipeline: install
	$(PY) -m align pipeline $(RECIPE) $(ARGS)

# make export ADAPTER=runs/x/sft OUT=runs/x/merged
export: install
	$(PY) -m align export $(ADAPTER) $(OUT)

bench: install
	$(PY) bench/bench_jetmoe.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
