# Two set-up commands: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make test-oldest`: the suite on the lowest versions the pins allow (.ci/oldest.txt), in a venv of its own; all
# but the tests of our Triton kernels, which depend only on torch and Triton (the same versions in both venvs), and
# the end-to-end runs marked slow (kills, resumes, several processes, the harness), which `make test` runs: they
# test our orchestration on the same library code paths the fast tests already cross, and would double CI's time.
OLDEST_VENV ?= .venv-oldest
OLDEST_TESTS ?= tests '--ignore-glob=tests/test_kernels_*' --ignore=tests/test_lora_kernels.py \
	--ignore=tests/test_model_triton.py -m "not slow"
# CPU machines get the CPU wheel of torch; machines with an NVIDIA driver get the normal CUDA wheel.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.11,<2.15" || echo "torch==2.13.0")
RECIPE ?= recipes/tiny/pipeline.yaml
ARGS ?=
PYTEST_ARGS ?=
# The suite on two processes (pytest-xdist), each test file on one of them (its module-scoped fixtures built once):
# many tests wait on processes they launch, so two cores run two files at once. PYTEST_WORKERS=0: in one process.
PYTEST_WORKERS ?= 2
PYTEST := -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install deepspeed test test-oldest demo prepare sft dpo pipeline export eval harness bench clean

# $(call venv,DIR,PIP_ARGS): DIR gets a venv with torch, then the project (its dev extra) installed with PIP_ARGS.
define venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
	touch $(1)/.installed
endef

$(VENV)/.installed: pyproject.toml
	$(call venv,$(VENV),)

$(OLDEST_VENV)/.installed: pyproject.toml .ci/oldest.txt
	$(call venv,$(OLDEST_VENV),-c .ci/oldest.txt)

install: $(VENV)/.installed

# DeepSpeed builds no ops ahead (DS_BUILD_OPS=0): on CPU its tests run on its CPU accelerator (DS_ACCELERATOR=cpu).
$(VENV)/.deepspeed: $(VENV)/.installed
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed>=0.19,<0.20"
	touch $@

deepspeed: $(VENV)/.deepspeed

# With DeepSpeed, so that its tests (ZeRO-2/3 pipelines, sharded resume) run; `make test-oldest` skips them.
test: $(VENV)/.deepspeed
	$(PY) $(PYTEST) $(PYTEST_ARGS)

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "import transformers, trl, peft, datasets, accelerate; \
		print('oldest:', *(f'{m.__name__} {m.__version__}' for m in (transformers, trl, peft, datasets, accelerate)))"
	$(OLDEST_VENV)/bin/python $(PYTEST) $(OLDEST_TESTS) $(PYTEST_ARGS)

# The demo starts afresh each time: it replaces an earlier demo run in runs/demo (the stages refuse that otherwise).
demo: install
	$(PY) -m align pipeline recipes/tiny/pipeline.yaml --overwrite_output_dir $(ARGS)

# make prepare RECIPE=...: the recipe's data read, checked, tokenised and packed ahead of training (a stage or a
# pipeline recipe); the stages then reuse it.
prepare: install
	$(PY) -m align prepare $(RECIPE) $(ARGS)

sft: install
	$(PY) -m align sft $(RECIPE) $(ARGS)

dpo: install
	$(PY) -m align dpo $(RECIPE) $(ARGS)

pipeline: install
	$(PY) -m align pipeline $(RECIPE) $(ARGS)

# make export ADAPTER=runs/x/sft OUT=runs/x/merged
export: install
	$(PY) -m align export $(ADAPTER) $(OUT)

# make eval: MT-Bench on a saved chat model (MODEL, default the demo's). Without JUDGE_URL a local stub judge rates
# the answers by length: it shows the pipeline, it is not an evaluation. A real judge:
#   make eval MODEL=runs/jetmoe-8b-chat/dpo JUDGE_URL=https://api.openai.com/v1 JUDGE_MODEL=gpt-4 EVAL_ARGS=
# Questions and judge prompts come from where they are published (the hub, FastChat's repository); MT_BENCH=DIR
# reads local copies instead: DIR/question.jsonl and DIR/judge_prompts.jsonl (FastChat's llm_judge/data/mt_bench).
MODEL ?= runs/demo/dpo
MT_BENCH ?=
QUESTIONS := $(if $(MT_BENCH),--questions $(MT_BENCH)/question.jsonl)
JUDGE_URL ?=
JUDGE_MODEL ?= gpt-4
EVAL_ARGS ?= --per_category 2 --max_new_tokens 32
STUB_PORT ?= 8765
eval: install
	@if [ -n "$(JUDGE_URL)" ]; then \
		$(PY) -m align eval mt-bench $(MODEL) $(QUESTIONS) --judge-url $(JUDGE_URL) \
			--judge-model $(JUDGE_MODEL) $(EVAL_ARGS); \
	else \
		echo "stub judge on 127.0.0.1:$(STUB_PORT): not a real evaluation"; \
		$(PY) -m align.evaluation.stub_judge --port $(STUB_PORT) --seconds 900 & stub=$$!; sleep 1; \
		$(PY) -m align eval mt-bench $(MODEL) $(QUESTIONS) \
			--judge-url http://127.0.0.1:$(STUB_PORT)/v1 --judge-model stub \
			--note "Judge: the stub (align.evaluation.stub_judge, rates by length). Not a real evaluation." \
			$(EVAL_ARGS); status=$$?; kill $$stub; exit $$status; \
	fi

# make harness: lm-evaluation-harness on saved models, a column each in one table (runs/harness/harness.md, .png),
# JetMoE-8B's published numbers beside them. TASKS: lm-eval task names or presets (model_card: the card's six,
# fetched from the hub). Offline, the local tasks the tests use:
#   make harness MODELS="runs/demo/sft runs/demo/dpo" TASKS=tiny_mc,tiny_gen HARNESS_ARGS="--include_path tests/fixtures/harness"
MODELS ?= runs/demo/sft runs/demo/dpo
TASKS ?= model_card
HARNESS_ARGS ?=
harness: install
	$(PY) -m align eval harness $(MODELS) --tasks $(TASKS) $(HARNESS_ARGS)

bench: install
	$(PY) bench/bench_jetmoe.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
