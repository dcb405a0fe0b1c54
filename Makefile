# The project's commands. `make test` and `make run` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/ml100k.yaml
BUNDLE ?= bundles/ml100k-quick
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests and jobs share two cores with the service processes they start.
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test run quality baselines bench lint redis backfill clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, from the CPU wheel on disk: a plain resolve would pull the CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test,bench,lint]"
	touch $(STAMP)

install: $(STAMP)

redis:
	@scripts/ensure_redis.sh

test: install redis
	$(PY) -m pytest -q

run: install
	@if [ ! -f $(BUNDLE)/manifest.json ]; then \
		echo "no bundle at $(BUNDLE): training the quick bundle on MovieLens-100K"; \
		$(PY) -m trainer quick --config $(CONFIG) --out $(BUNDLE) || exit 1; \
	fi
	LLMEMB_BUNDLE_PATH=$(BUNDLE) $(PY) -m service --host $(HOST) --port $(PORT) --print-examples \
		$(if $(REDIS_URL),--redis-url $(REDIS_URL),)

quality: install
	$(PY) -m trainer quality --config $(CONFIG) --set train.patience=10 --set train.epochs=40 --set train.max_seconds=0 --set train.progress=false

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
