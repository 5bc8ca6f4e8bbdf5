#!/usr/bin/env bash
# scripts/gpu_check.sh: every check that needs a GPU, on a machine with one CUDA GPU, in under 10 minutes,
# printed as one table (the README quotes it with the date and the GPU). Each check's output goes to
# $OUT/<check>.log; a check that fails or runs out of its time is a row that says so, and the others go on.
#
#   bash scripts/gpu_check.sh            # after `make install`; offline
#
# Rows: the CUDA tests (`make test-gpu`), the optimizer-step benchmark on CUDA (`make bench`), a ResNet20
# learning-rate grid batched vs sequential (synthetic CIFAR-sized data, 200 steps, runs per hour), and
# one smoke epoch of one batch of every large workload on CUDA in bf16 (IWSLT14 in fp32: fairseq's
# MoMo runs in fp32 only).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu_check}
export WANDB_MODE=offline HF_HUB_OFFLINE=1
mkdir -p "$OUT"
ROWS=()

# check <name> <seconds> <summary: a command that reads the log on stdin> <command ...>
check() {
    local name=$1 limit=$2 summary=$3 start=$SECONDS rc
    shift 3
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local status="ok"
    ((rc == 124)) && status="TIMEOUT (${limit} s)"
    ((rc != 0 && rc != 124)) && status="FAILED (exit $rc)"
    ROWS+=("| $name | $status | $((SECONDS - start)) s | $(bash -c "$summary" <"$OUT/$name.log" | tr '\n|' ' /') |")
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")

check test-gpu 150 "grep -E '(passed|failed|error)' | tail -1" make -o .venv/.installed test-gpu
# `make bench`'s script itself: the target would first pip-install momo-opt (the comparison), offline here
check bench-cuda 120 "grep -iE 'momo|ratio' | tail -3" "$PY" scripts/bench.py --device cuda --repeats 10
check resnet20-grid 200 "grep -E '^\| (sequential|batched) '" \
    "$PY" scripts/bench_sweep.py --device cuda --skip-mlp --resnet-steps 200 --resnet-members 16

for experiment in cifar10_vgg16 cifar100_resnet110 cifar10_vit imagenet32_resnet18 imagenet_vit \
    criteo_dlrm diffusion fashion_mnist_diffusion iwslt14; do
    amp=bf16
    [[ $experiment == iwslt14 ]] && amp=none
    check "smoke-$experiment" 45 "grep -oE '(completed|diverged|failed) after [0-9]+ epochs' | tail -1" \
        "$PY" -m experiments.train "experiment=$experiment" profile=smoke device=cuda "amp=$amp" epochs=1 \
        profile.max_train_batches=1 "results_dir=$OUT/results"
done

echo
echo "GPU checks, $(date '+%Y-%m-%d'), $GPU, torch $("$PY" -c 'import torch; print(torch.__version__)')"
echo
echo "| check | status | time | result |"
echo "|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
