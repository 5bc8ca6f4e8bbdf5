#!/usr/bin/env bash
# IWSLT14 De-En for experiment=iwslt14: fairseq's examples/translation/prepare-iwslt14.sh (Moses
# tokenisation, cleaning, lowercasing, 1/23 validation split, 10k joint BPE) done with sacremoses and
# subword-nmt, then fairseq-preprocess into DATA_DIR/iwslt14/data-bin. Needs scripts/install_fairseq.sh.
#
#   scripts/prepare_iwslt14.sh --data-dir data                    # reads data/iwslt14/orig/de-en.tgz
#   scripts/prepare_iwslt14.sh --data-dir data --archive ~/de-en.tgz
#   scripts/prepare_iwslt14.sh --data-dir data --download         # fetches the original WIT3 archive
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m experiments.workloads.iwslt14.data "$@"
