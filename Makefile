# nextword: `make serve` runs the service on the shipped models, `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/wikitext-2
# CPU-only PyTorch. On a plain Linux x86-64 machine the public index's torch==2.13.0 is the CUDA build
# (several GB of NVIDIA wheels); PyTorch's CPU index has 2.13.0+cpu, which the torch==2.13.0 pin
# accepts: `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` (on a fresh .venv).
TORCH_INDEX ?=
PIP_EXTRA   := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
.PHONY: install install-dev serve test train train-lstm train-rnn clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamp files re-run pip only when pyproject.toml changes.
$(VENV)/.service: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@
$(VENV)/.dev: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q $(PIP_EXTRA) -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.service

install: $(VENV)/.service
install-dev: $(VENV)/.dev

serve: install
	$(PY) -m service

test: install-dev
	$(PY) -m pytest

# Reproduces the shipped bundles from the WikiText-2 corpus in $(DATA) (CPU, ~1 h on 2 cores).
train: train-lstm train-rnn

train-lstm: install-dev
	$(PY) -m training train --data $(DATA) --out runs/wikitext2-lstm --architecture lstm --layers 2 \
	  --embedding-size 128 --hidden-size 256 --dropout 0.25 --softmax adaptive --cutoffs 2000,10000 \
	  --optimizer adam --lr 0.003 --schedule cosine --clip 1.0 --batch-size 20 --bptt 35 --epochs 7 \
	  --seed 1111 --threads 1
	$(PY) -m training export --checkpoint runs/wikitext2-lstm/best.pt --out models/wikitext2-lstm --data $(DATA) \
	  --context-window 200

train-rnn: install-dev
	$(PY) -m training train --data $(DATA) --out runs/wikitext2-rnn --architecture rnn_tanh --layers 2 \
	  --embedding-size 128 --hidden-size 256 --dropout 0.1 --softmax adaptive --cutoffs 2000,10000 \
	  --optimizer adam --lr 0.001 --schedule cosine --clip 0.5 --batch-size 20 --bptt 35 --epochs 6 \
	  --seed 1111 --threads 1
	$(PY) -m training export --checkpoint runs/wikitext2-rnn/best.pt --out models/wikitext2-rnn --data $(DATA) \
	  --context-window 200

clean:
	rm -rf $(VENV) runs var .pytest_cache
