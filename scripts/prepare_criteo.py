"""Turn the Criteo Kaggle `train.txt` into the memory-mapped arrays the criteo_dlrm task reads.

    python scripts/prepare_criteo.py --input <dir>/train.txt --output data/criteo [--min-count 3]
    python scripts/prepare_criteo.py --input <dir>/train.txt --output data/criteo --hash-size 100000

The output directory gets {train,val}_{dense,sparse,labels}.npy and meta.json; the last of the 7
days is the validation split (format: experiments/data/criteo.py). The data itself (Criteo's "Display
Advertising Challenge" set, dac.tar.gz) is downloaded by hand: it needs accepting Criteo's terms.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.data.criteo import DAYS, prepare_criteo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="the Kaggle train.txt")
    parser.add_argument("--output", required=True, type=Path, help="e.g. <data_dir>/criteo")
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument(
        "--min-count",
        type=int,
        default=3,
        help="categorify: values seen fewer times in the training days share id 0 (default 3)",
    )
    ids.add_argument(
        "--hash-size", type=int, help="hash the categorical values into this many rows"
    )
    parser.add_argument("--days", type=int, default=DAYS, help="the last of these days is val")
    parser.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows parsed at a time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.input.is_file():
        parser.error(f"{args.input} is not a file")
    meta = prepare_criteo(
        args.input,
        args.output,
        min_count=args.min_count,
        hash_size=args.hash_size,
        days=args.days,
        chunk_rows=args.chunk_rows,
    )
    print(f"{args.output}: {meta['n_train']} train, {meta['n_val']} val rows")
    print(f"table sizes: {meta['table_sizes']}")


if __name__ == "__main__":
    main()
