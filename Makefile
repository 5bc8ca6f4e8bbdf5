# MoMo suite. `make help` lists the targets. Everything runs from the project's own virtualenv (.venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

EXPERIMENT ?= fashion_mnist_mlp
LAUNCHER ?= parallel
FIG ?= $(EXPERIMENT)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast test-gpu test-slurm test-all lint format bench bench-sweep gpu-check \
        reproduce-figure sweep status \
        aggregate plot paper-figures report wandb-summary smoke install-fairseq install-torchrec data-fashion-mnist \
        data-iwslt14 data-criteo clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install_fairseq.sh scripts/install_torchrec.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[experiments,dev]"
	PYTHON=$(PY) bash scripts/install_fairseq.sh
	PYTHON=$(PY) bash scripts/install_torchrec.sh
	touch $(STAMP)

install: $(STAMP) ## create .venv with the project, every extra, fairseq, torchrec and the dev tools

install-fairseq: ## (re)install fairseq-fixed into .venv (part of install)
	PYTHON=$(PY) bash scripts/install_fairseq.sh

install-torchrec: ## (re)install torchrec for DLRM into .venv (part of install)
	PYTHON=$(PY) bash scripts/install_torchrec.sh

test: $(STAMP) ## every CPU test: the math, every smoke run, sweeps, local SLURM (offline; 10.5-12.5 min on 2 cores)
	$(PY) -m pytest -m "not gpu"

test-fast: $(STAMP) ## the quick subset for development (no slow, SLURM or GPU tests; 3.5 min)
	$(PY) -m pytest

test-gpu: $(STAMP) ## the CUDA tests (needs a GPU)
	$(PY) -m pytest -m gpu

test-slurm: $(STAMP) ## the SLURM sweep tests on a local single-node cluster (root, Debian; stops what it starts)
	$(PY) -m pytest -m slurm tests/experiments/runner/test_slurm.py

test-all: $(STAMP) ## every test, GPU ones included (they skip without CUDA)
	$(PY) -m pytest -m ""

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check momo experiments scripts tests
	$(VENV)/bin/ruff format --check momo experiments scripts tests

format: $(STAMP) ## ruff format and autofix
	$(VENV)/bin/ruff format momo experiments scripts tests
	$(VENV)/bin/ruff check --fix momo experiments scripts tests

BENCH_ARGS ?=
bench: $(STAMP) ## optimizer-step benchmark against torch.optim and momo-opt 0.1.0 (BENCH_ARGS="--threads 1 --clock cpu")
	test -f .bench_cache/momo_opt/momo/__init__.py || \
	  $(PY) -m pip install -q --no-deps --target .bench_cache/momo_opt momo-opt==0.1.0
	$(PY) scripts/bench.py $(BENCH_ARGS)

BENCH_SWEEP_ARGS ?=
bench-sweep: $(STAMP) ## batched vs sequential sweep throughput: the default figure's MLP grid, a ResNet20 grid
	$(PY) scripts/bench_sweep.py $(BENCH_SWEEP_ARGS)

gpu-check: $(STAMP) ## on a machine with one GPU: GPU tests, bench, ResNet20 grid, bf16 smoke runs, one table
	PY=$(PY) bash scripts/gpu_check.sh

sweep: $(STAMP) ## run the lr sweep of EXPERIMENT (LAUNCHER=parallel|local|slurm|slurm_cpu, ARGS="overrides")
	$(PY) -m experiments.runner.sweep $(EXPERIMENT) --launcher $(LAUNCHER) $(ARGS)

status: $(STAMP) ## how many runs of the sweep of EXPERIMENT are done, diverged, failed, missing
	$(PY) -m experiments.runner.sweep $(EXPERIMENT) --status $(ARGS)

aggregate: $(STAMP) ## the summary and widths of EXPERIMENT's sweep (results/; ARGS: the sweep's overrides)
	$(PY) -m experiments.analysis.aggregate $(EXPERIMENT) $(ARGS)

plot: $(STAMP) ## the figures of EXPERIMENT (plots/), from its aggregated summary
	$(PY) -m experiments.analysis.plot $(EXPERIMENT)

paper-figures: $(STAMP) ## the paper's six record-backed figures from results/paper (plots/paper/) + widths
	$(PY) -m experiments.analysis.paper_figures

report: $(STAMP) ## one self-contained HTML page of EXPERIMENT (plots/EXPERIMENT/report.html)
	$(PY) -m experiments.analysis.report $(EXPERIMENT)

wandb-summary: $(STAMP) ## log EXPERIMENT's figures and tables as a "summary" run in its sweep's W&B group
	$(PY) -m experiments.runner.wandb_summary $(EXPERIMENT) $(ARGS)

BATCHED ?= true
GROUP_SIZE ?=
reproduce-figure: $(STAMP) ## sweep + aggregate + plot of FIG (default: Fashion-MNIST MLP on this CPU; BATCHED=false)
	PY=$(PY) FIG=$(FIG) LAUNCHER=$(LAUNCHER) ARGS="$(ARGS)" BATCHED=$(BATCHED) GROUP_SIZE=$(GROUP_SIZE) \
	  bash scripts/reproduce_figure.sh

smoke: $(STAMP) ## a seconds-long CPU run of EXPERIMENT on synthetic data
	$(PY) -m experiments.train experiment=$(EXPERIMENT) profile=smoke

data-iwslt14: $(STAMP) ## IWSLT14 De-En: fairseq's preparation + fairseq-preprocess (needs de-en.tgz)
	bash scripts/prepare_iwslt14.sh --data-dir $${MOMO_DATA_DIR:-data}

CRITEO_TXT ?= train.txt
data-criteo: $(STAMP) ## Criteo Kaggle train.txt -> memory-mapped arrays (CRITEO_TXT=/path/train.txt)
	$(PY) scripts/prepare_criteo.py --input $(CRITEO_TXT) --output $${MOMO_DATA_DIR:-data}/criteo

data-fashion-mnist: ## real Fashion-MNIST from Debian's package (root)
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

clean: ## remove the virtualenv and caches (keeps results)
	rm -rf $(VENV) .bench_cache .pytest_cache .ruff_cache
