#!/usr/bin/env bash
# `make reproduce-figure [FIG=<experiment>] [LAUNCHER=parallel|local|slurm] [ARGS="<overrides>"]
#   [BATCHED=false] [GROUP_SIZE=<n>]`
#
# With no arguments: the paper's MNIST protocol on real Fashion-MNIST (fashion_mnist_mlp: MoMo,
# MoMo-Adam, SGD-M and Adam over the paper's MNIST lr grids, 3 seeds, 10 epochs; MoMo* for the extras
# figure) on local parallel workers, then the aggregated tables (results/), the figures of
# configs/figure/$FIG.yaml and the HTML report (plots/$FIG/). ARGS reach the sweep and the aggregate,
# which takes exactly the runs of the sweep run with them. Resumable: rerun it after an interruption
# and only the missing runs train. FIG=<id> LAUNCHER=slurm does the same for any sweep of
# configs/sweep/ on a SLURM cluster (obtain that experiment's data first: see its task's error message).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
FIG=${FIG:-fashion_mnist_mlp}
LAUNCHER=${LAUNCHER:-parallel}
read -r -a EXTRA <<< "${ARGS:-}"
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
DATA_DIR=${MOMO_DATA_DIR:-data}
RESULTS=results
for arg in "${EXTRA[@]}"; do [[ $arg == results_dir=* ]] && RESULTS=${arg#results_dir=}; done
DEBIAN_DIR=/usr/share/datasets/fashion-mnist

say() { echo "reproduce-figure: $*"; }

obtain_fashion_mnist() {
    if [[ -f $DEBIAN_DIR/train-images-idx3-ubyte.gz ]]; then
        say "Fashion-MNIST: using the Debian package's files in $DEBIAN_DIR"
    elif [[ -d $DATA_DIR/FashionMNIST/raw ]]; then
        say "Fashion-MNIST: using $DATA_DIR/FashionMNIST"
    elif command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]] \
        && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
        say "Fashion-MNIST: installed the Debian package dataset-fashion-mnist (apt-get) into $DEBIAN_DIR"
    elif command -v sudo >/dev/null && sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
        say "Fashion-MNIST: installed the Debian package dataset-fashion-mnist (sudo apt-get) into $DEBIAN_DIR"
    else
        say "Fashion-MNIST: apt is not usable here; downloading it with torchvision into $DATA_DIR"
        "$PY" -c "import sys, torchvision; [torchvision.datasets.FashionMNIST(sys.argv[1], train=t, download=True) for t in (True, False)]" "$DATA_DIR" \
            || { say "the download failed: no Fashion-MNIST (install dataset-fashion-mnist or go online)"; exit 1; }
    fi
}

[[ $FIG == fashion_mnist_mlp || $FIG == lr_free ]] && obtain_fashion_mnist

start=$(date +%s)
say "sweep $FIG on launcher $LAUNCHER ($(nproc) cores, batched=${BATCHED:-true}, load $(cut -d' ' -f1-3 /proc/loadavg))"
# Batched groups by default (docs/design.md §7); BATCHED=false: one process per run.
SWEEP_FLAGS=()
[[ ${BATCHED:-true} == false ]] && SWEEP_FLAGS+=(--sequential)
[[ -n ${GROUP_SIZE:-} ]] && SWEEP_FLAGS+=(--group-size "$GROUP_SIZE")
"$PY" -m experiments.runner.sweep "$FIG" --launcher "$LAUNCHER" "${SWEEP_FLAGS[@]}" "${EXTRA[@]}"
"$PY" -m experiments.runner.sweep "$FIG" --status "${EXTRA[@]}"
"$PY" -m experiments.analysis.aggregate "$FIG" --results-dir "$RESULTS" "${EXTRA[@]}"
"$PY" -m experiments.analysis.plot "$FIG" fig1 --results-dir "$RESULTS" --plots-dir "${PLOTS:-plots}"
"$PY" -m experiments.analysis.report "$FIG" --results-dir "$RESULTS" --plots-dir "${PLOTS:-plots}"
say "done in $(( $(date +%s) - start )) s (load $(cut -d' ' -f1-3 /proc/loadavg)): $RESULTS/${FIG}_summary.csv, ${PLOTS:-plots}/$FIG/ (report.html)"
