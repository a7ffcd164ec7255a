# nextword: `make serve` runs the service on the shipped models, `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# WikiText-2 for `make train`: `make data` downloads it here (checked against its sha256) unless DATA names a
# folder that already holds train.txt, valid.txt and test.txt.
DATA   ?= data/wikitext-2
DATA_URL ?=
# `make train` trains on CPU (training/cpu_recipe.sh, bundles in TRAINED); DEVICE=cuda runs the GPU recipe that
# made the shipped models/ (training/gpu_recipe.sh, needs a CUDA GPU).
DEVICE  ?= cpu
TRAINED ?= runs/models
# CPU-only PyTorch. On a plain Linux x86-64 machine the public index's torch==2.13.0 is the CUDA build
# (several GB of NVIDIA wheels); PyTorch's CPU index has 2.13.0+cpu, which the torch==2.13.0 pin
# accepts: `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` (on a fresh .venv).
TORCH_INDEX ?=
PIP_EXTRA   := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# Container images (Dockerfile). BASE_IMAGE: any Debian-based image with Python 3.11 as python3.
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE      ?= nextword
BASE_IMAGE ?= python:3.11.15-slim-bookworm
DOCKER_BUILD := docker build --build-arg PYTHON_IMAGE=$(BASE_IMAGE)

.PHONY: bench install install-dev serve test test-fast soak data train train-smoke image image-cpu image-gpu image-smoke monitoring clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamp files re-run pip only when a pyproject.toml changes. The client (clients/python: the `nextword`
# command) is a distribution of its own, installed beside the service.
CLIENT := clients/python
$(VENV)/.service: pyproject.toml $(CLIENT)/pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e . -e $(CLIENT)
	touch $@
$(VENV)/.dev: pyproject.toml $(CLIENT)/pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q $(PIP_EXTRA) -c constraints.txt -e '.[test]' -e $(CLIENT)
	touch $@ $(VENV)/.service

install: $(VENV)/.service
install-dev: $(VENV)/.dev

serve: install
	$(PY) -m service

test: install-dev
	$(PY) -m pytest

# The quick loop: every test but those marked `slow` (pyproject.toml); `make test` runs them all.
test-fast: install-dev
	$(PY) -m pytest -m "not slow"

# Minutes of mixed load with faults (Redis and worker kills) against `python -m service`; never part of `make test`.
# Reports errors, lost updates and memory growth; exits 1 on unexpected answers or lost updates.
SOAK_ARGS ?= --duration 180 --clients 8
soak: install-dev
	$(PY) tools/soak.py $(SOAK_ARGS)

# WikiText-2 into $(DATA), each file checked against its sha256 (python -m training data; no torch needed).
# `make train` fetches it only when $(DATA) has no train.txt, so DATA=any/corpus/folder trains on that as it is.
FETCH = $(PY) -m training data --out $(DATA) $(if $(DATA_URL),--base-url $(DATA_URL))
data: install
	$(FETCH)
$(DATA)/train.txt: | install
	$(FETCH)

# CPU (default): training/cpu_recipe.sh trains an LSTM and a tanh RNN with the recipes' 25-minute budgets, both at
# once, and exports them into $(TRAINED) (serve them: NEXTWORD_MODELS_DIR=$(TRAINED) make serve).
# DEVICE=cuda: reproduces the shipped bundles in models/: training/gpu_recipe.sh trains both at once on one CUDA GPU
# (~5 min on an H200), then training/after_gpu.sh exports them here on CPU and measures them through onnxruntime.
# `make train-smoke` runs the GPU recipe's commands on CPU for two steps per epoch (a check of the path, not a model).
train: install-dev $(DATA)/train.txt
ifeq ($(DEVICE),cuda)
	PYTHON=$(PY) RUNS=runs training/gpu_recipe.sh $(DATA) runs/gpu
	PYTHON=$(PY) training/after_gpu.sh runs/gpu $(DATA)
else ifeq ($(DEVICE),cpu)
	PYTHON=$(PY) training/cpu_recipe.sh $(DATA) runs/cpu $(TRAINED)
else
	$(error DEVICE=$(DEVICE): use DEVICE=cpu (the default) or DEVICE=cuda)
endif

train-smoke: install-dev $(DATA)/train.txt
	PYTHON=$(PY) RUNS=runs/smoke training/gpu_recipe.sh $(DATA) runs/smoke/out --smoke
	PYTHON=$(PY) training/after_gpu.sh runs/smoke/out $(DATA) runs/smoke/models

# The CPU image (plain onnxruntime) and the GPU image (onnxruntime-gpu with NVIDIA's CUDA/cuDNN wheels).
image: image-cpu image-gpu

image-cpu:
	$(DOCKER_BUILD) -t $(IMAGE):$(VERSION) .

image-gpu:
	$(DOCKER_BUILD) --build-arg ONNXRUNTIME='onnxruntime-gpu[cuda,cudnn]' -t $(IMAGE):$(VERSION)-gpu .

# Runs the CPU image read-only and checks /readyz, /predict and a stream (deploy/image_smoke.py).
image-smoke:
	$(PYTHON) deploy/image_smoke.py $(IMAGE):$(VERSION)

# deploy/monitoring/prometheusrule.yaml is deploy/prometheus/alerts.yml wrapped for the Prometheus Operator
# (tests/test_deploy.py fails while they differ).
monitoring: install-dev
	$(PY) -c 'import yaml; groups = yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]; \
	  rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "nextword", \
	  "namespace": "nextword", "labels": {"app.kubernetes.io/name": "nextword", "app.kubernetes.io/part-of": "nextword"}}, \
	  "spec": {"groups": groups}}; \
	  head = "# GENERATED by `make monitoring` from deploy/prometheus/alerts.yml (edit that file, not this one).\n"; \
	  open("deploy/monitoring/prometheusrule.yaml", "w").write(head + yaml.safe_dump(rule, sort_keys=False, width=1000))'

# The service against the engine and a bare-Flask floor, measured in one run (~2 min on 2 cores; needs wrk:
# apt-get install wrk). Prints a table of ratios, writes benchmarks/results/{results.json,results.md,bench.png}.
# Never part of `make test`.
bench: install-dev
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs var .pytest_cache
