# Analog Lab: the two commands are `make up` (run the platform on this machine) and
# `make test` (the whole suite). Both bootstrap the virtualenv they need and are fast the
# second time: installs are stamped with a hash of pyproject.toml and the extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-12)
export ANALOGLAB_HOME ?= $(CURDIR)/.analoglab
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: up test lint typecheck docs pytest bench images clean help

help:
	@echo "make up     run the platform: JupyterHub, the queue, MLflow, the demo lab (Ctrl-C stops)"
	@echo "make test   ruff, mypy, the docs build and the whole pytest suite"
	@echo "make bench  the benchmarks under benchmarks/ (figures in docs/performance.md)"
	@echo "make images the container images of images/ (needs docker or podman)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned, so that nothing later pulls a bigger build.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	touch $@

$(VENV)/.stamp-%-$(PYPROJECT_HASH): $(VENV)/.torch
	$(BIN)/pip install --quiet -e '.[$(subst +,$(comma),$*)]'
	rm -f $(VENV)/.stamp-$*-*
	touch $@

comma := ,
RUNTIME := $(VENV)/.stamp-all-$(PYPROJECT_HASH)
DEV := $(VENV)/.stamp-all+dev-$(PYPROJECT_HASH)

lint: $(DEV)
	$(BIN)/ruff check platform tests benchmarks

typecheck: $(DEV)
	$(BIN)/mypy

docs: $(DEV)
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

# JupyterHub's proxy, for the platform and the tests against a real hub (npm; stamped).
CHP_VERSION := 5
CHP_STAMP := $(VENV)/node/.stamp-chp-$(CHP_VERSION)
export CONFIGURABLE_HTTP_PROXY := $(CURDIR)/$(VENV)/node/node_modules/.bin/configurable-http-proxy

$(CHP_STAMP): | $(BIN)/python
	npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error \
		configurable-http-proxy@$(CHP_VERSION)
	test -x $(CONFIGURABLE_HTTP_PROXY)
	touch $@

# The platform in the foreground (Ctrl-C stops it): JupyterHub and every service on
# http://127.0.0.1:8000; the first run builds the demo models. UP_ARGS="--port 9000 --dev" ...
up: $(RUNTIME) $(CHP_STAMP)
	$(BIN)/analoglab doctor
	$(BIN)/analoglab up $(UP_ARGS)

pytest: $(DEV) $(CHP_STAMP)
	$(BIN)/python -m pytest

test: lint typecheck docs pytest

# The benchmarks behind docs/performance.md and docs/transfer.md (about 30 minutes on 2 cores).
bench: $(DEV)
	$(BIN)/python benchmarks/foundry.py --preset tiny --stages-docs docs/performance.md
	$(BIN)/python benchmarks/foundry.py --preset demo --stages-docs docs/performance.md
	$(BIN)/python benchmarks/distill_starts.py --home $(ANALOGLAB_HOME)="$$(nproc) threads" --starts 3
	$(BIN)/python benchmarks/capture.py --shape demo
	$(BIN)/python benchmarks/capture.py --shape large --batch 8 --iters 10
	$(BIN)/python benchmarks/architectures.py
	$(BIN)/analoglab models build
	$(BIN)/python benchmarks/transfer.py --home $(ANALOGLAB_HOME)="$$(nproc) threads" --markdown docs/transfer-benchmark.md
	$(BIN)/python benchmarks/demo.py --home $(ANALOGLAB_HOME) --markdown docs/performance.md
	$(BIN)/python benchmarks/activations.py
	$(BIN)/python benchmarks/queue_load.py
	$(BIN)/python benchmarks/lab.py --docs docs/performance.md --block tiny
	$(BIN)/python benchmarks/lab.py --home $(ANALOGLAB_HOME) --docs docs/performance.md --block demo
	$(BIN)/python benchmarks/probe_fits.py --docs docs/performance.md --block cpu
	$(BIN)/python benchmarks/packing.py --frontier-path $(ANALOGLAB_HOME)/foundry/demo/frontier/final --docs docs/performance.md --block cpu
	$(BIN)/python benchmarks/frontier_throughput.py --home $(ANALOGLAB_HOME) --docs docs/performance.md --block queue-mixed
	$(BIN)/python benchmarks/frontier_throughput.py --home $(ANALOGLAB_HOME) --mix evaluation --docs docs/performance.md --block queue-evaluation
	$(BIN)/python benchmarks/frontier_throughput.py --home $(ANALOGLAB_HOME) --mix evaluation --draws own --docs docs/performance.md --block queue-evaluation-own
	$(BIN)/python benchmarks/frontier_throughput.py --home $(ANALOGLAB_HOME) --threads 1 --docs docs/performance.md --block queue-mixed-1-thread
	$(BIN)/python benchmarks/platform_up.py --home $(ANALOGLAB_HOME)

# The container images of images/ (see images/README.md), with the first container builder
# found (docker, podman; or CONTAINER_BUILDER=...). Tags: $(IMAGE_REGISTRY)/<image>:$(IMAGE_TAG).
IMAGE_REGISTRY ?= ghcr.io/analoglab
IMAGE_TAG ?= 0.1.0
CONTAINER_BUILDER ?= $(firstword $(foreach b,docker podman,$(if $(shell command -v $(b) 2>/dev/null),$(b))))
IMAGE_BUILD = $(CONTAINER_BUILDER) build --pull

images:
	@test -n "$(CONTAINER_BUILDER)" || { echo "make images: no container builder (docker or podman) on this machine; set CONTAINER_BUILDER" >&2; exit 1; }
	$(IMAGE_BUILD) -f images/notebook/Dockerfile -t $(IMAGE_REGISTRY)/analoglab-notebook:$(IMAGE_TAG) .
	$(IMAGE_BUILD) -f images/notebook/Dockerfile.cuda -t $(IMAGE_REGISTRY)/analoglab-notebook:$(IMAGE_TAG)-cuda .
	$(IMAGE_BUILD) -f images/services/Dockerfile --target queue -t $(IMAGE_REGISTRY)/analoglab-queue:$(IMAGE_TAG) .
	$(IMAGE_BUILD) -f images/services/Dockerfile --target mlflow -t $(IMAGE_REGISTRY)/analoglab-mlflow:$(IMAGE_TAG) .
	$(IMAGE_BUILD) -f images/services/Dockerfile --target demo -t $(IMAGE_REGISTRY)/analoglab-demo:$(IMAGE_TAG) .
	$(IMAGE_BUILD) -f images/lab-worker/Dockerfile -t $(IMAGE_REGISTRY)/analoglab-lab-worker:$(IMAGE_TAG) .
	$(IMAGE_BUILD) -f images/hub/Dockerfile -t $(IMAGE_REGISTRY)/analoglab-hub:$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) site
