# pvera_bench: `make demo` (offline demo) and `make test` (the suite) each install what they need first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
BENCH  := $(VENV)/bin/pvera-bench
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.DEFAULT_GOAL := help
.PHONY: help install install-dev demo demo-sampling demo-uncertainty test lint table report reproduce bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

$(VENV)/.install-base: pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[cluster]"
	@touch $@

$(VENV)/.install-dev: $(VENV)/.install-base
	$(PIP) -e ".[cluster,dev]"
	@touch $@

install: $(VENV)/.install-base  ## create .venv with the pinned runtime (torch, timm, hydra, ...)

install-dev: $(VENV)/.install-dev  ## add the test tools (pytest, ruff, import-linter, peft)

demo: install  ## offline demo: linear, lora, vera, pvera on mnist5k with a tiny ViT, then the table
	$(BENCH) run --multirun experiment=demo adapter=linear,lora,vera,pvera trainer.progress=false
	$(BENCH) table --print --backbone tiny --dataset mnist5k

demo-sampling: install  ## PVeRA on mnist5k with each test-time sampling mode (mean, fixed, random, mc, mc_layer)
	$(BENCH) run --multirun experiment=demo adapter=pvera sampling=mean,fixed,random,mc,mc_layer sampling.n=10 \
		trainer.progress=false
	$(BENCH) table --print --backbone tiny --dataset mnist5k

demo-uncertainty: install  ## mnist5k, 2 seeds: PVeRA (10 MC passes) vs LoRA and VeRA with MC dropout -> calibration table, plots
	$(BENCH) run --multirun experiment=demo adapter=pvera sampling=mc sampling.n=10 seed=0,1 trainer.progress=false
	$(BENCH) run --multirun experiment=demo adapter=lora,vera adapter.dropout=0.1 sampling=mc sampling.n=10 \
		seed=0,1 trainer.progress=false
	$(BENCH) table --plot-task mnist5k

test: install-dev  ## the test suite
	$(PY) -m pytest

lint: install-dev  ## ruff lint and format check, and the layer contract (nothing imports upward)
	$(VENV)/bin/ruff check pvera_bench tests scripts
	$(VENV)/bin/ruff format --check pvera_bench tests scripts
	$(VENV)/bin/lint-imports

table: install  ## results/runs/**.json -> tables
	$(BENCH) table

report: install  ## the tables, then one self-contained HTML page of them, the figures and each run's provenance
	$(BENCH) report

reproduce: install  ## print the sweep that reproduces the PVeRA paper's table, with its projected GPU-hours
	$(BENCH) reproduce

bench: install-dev  ## adapter cost benchmark on ViT-B/16 (CPU, 2 cores: about 1 h) -> results/bench/
	$(PY) scripts/bench.py

clean:  ## remove the environment and generated outputs (never data/ or results/)
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
