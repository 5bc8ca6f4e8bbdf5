#!/usr/bin/env bash
# Install torchrec 1.9.2 (the criteo_dlrm task) into the project's virtualenv; idempotent.
#
#   bash scripts/install_torchrec.sh            # picks the fbgemm build: GPU if nvidia-smi sees one
#   FBGEMM=cpu bash scripts/install_torchrec.sh # or force it: FBGEMM=cpu | FBGEMM=gpu
#   PYTHON=/path/to/python bash scripts/install_torchrec.sh
#
# Why not `pip install torchrec`: it pulls the CUDA build of fbgemm-gpu, which cannot load without
# a GPU driver. On CPU machines fbgemm-gpu-cpu takes its place, and torchrec goes in with --no-deps
# so that pip does not add the CUDA build back (its other dependencies are listed here). The CPU set
# was measured with torch 2.14.1 (ENV.md); torchrec pins torchmetrics==1.0.3 but runs with 1.9.0.
# The GPU set (fbgemm-gpu 1.9.0 from PyPI) is untested here: no GPU machine.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
FBGEMM_VERSION=1.9.0
TORCHREC_VERSION=1.9.2

if [[ -z "${FBGEMM:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        FBGEMM=gpu
    else
        FBGEMM=cpu
    fi
fi
case "$FBGEMM" in
    cpu) FBGEMM_PACKAGE=fbgemm-gpu-cpu; OTHER_PACKAGE=fbgemm-gpu ;;
    gpu) FBGEMM_PACKAGE=fbgemm-gpu; OTHER_PACKAGE=fbgemm-gpu-cpu ;;
    *) echo "FBGEMM must be cpu or gpu, not '$FBGEMM'" >&2; exit 2 ;;
esac

# Both builds install the same `fbgemm_gpu` module: never keep the other one next to the chosen one.
if "$PYTHON" -m pip show --quiet "$OTHER_PACKAGE" >/dev/null 2>&1; then
    "$PYTHON" -m pip uninstall --yes "$OTHER_PACKAGE"
fi
# torch is pinned so that pip cannot swap the machine's build for another one.
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$PYTHON" -m pip install "torch==$TORCH_VERSION" "$FBGEMM_PACKAGE==$FBGEMM_VERSION" \
    tensordict==0.15.3 torchmetrics==1.9.0 pyre-extensions==0.0.32
"$PYTHON" -m pip install --no-deps "torchrec==$TORCHREC_VERSION"

"$PYTHON" -c '
from experiments.tasks.criteo_dlrm import require_torchrec
require_torchrec()
import torchrec
print("torchrec", torchrec.__version__, "ready")
'
