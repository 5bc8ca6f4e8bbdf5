#!/usr/bin/env bash
# fairseq for experiment=iwslt14 (ENV.md): fairseq 0.12.2 does not import on Python 3.11, the
# fairseq-fixed 0.12.3.1 fork does. It is installed without its dependency pins (which would replace
# hydra-core 1.3.8) and compiles its C++ extensions (~2 min). `pip check` complains afterwards: harmless.
# sacremoses and subword-nmt do the IWSLT14 tokenisation and BPE. Skips everything when fairseq imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if "$PYTHON" -c "import fairseq, sacremoses, subword_nmt" 2>/dev/null; then
    echo "fairseq already installed: $("$PYTHON" -c 'import fairseq; print(fairseq.__version__)' 2>/dev/null)"
    exit 0
fi
"$PYTHON" -m pip install cython cffi regex sacrebleu bitarray scikit-learn omegaconf sacremoses subword-nmt
"$PYTHON" -m pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
"$PYTHON" -c "import fairseq; print('fairseq', fairseq.__version__)"
