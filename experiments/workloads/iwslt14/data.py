"""IWSLT14 De-En: fairseq's preparation of the corpus, and the synthetic stand-in of the smoke profile.

    python -m experiments.workloads.iwslt14.data --data-dir data     # after placing de-en.tgz
    python -m experiments.workloads.iwslt14.data --data-dir data --download

(`make data-iwslt14` and scripts/prepare_iwslt14.sh run the same.) `prepare` follows fairseq's
`examples/translation/prepare-iwslt14.sh` (Moses tokenisation, cleaning, lowercasing, a 1/23 validation
split, joint BPE with 10k merges) with sacremoses and subword-nmt, then `fairseq-preprocess`.
`write_synthetic_corpus` makes the stand-in of the smoke profile.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import tarfile
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.data import DatasetNotFoundError
from experiments.workloads.iwslt14.commands import SRC, TGT, fairseq_tool, run_logged

log = logging.getLogger(__name__)

IWSLT14_URL = (
    "https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz"  # prepare-iwslt14.sh's source
)
PREPARE_COMMAND = "scripts/prepare_iwslt14.sh --data-dir {data_dir}"
# The test set of prepare-iwslt14.sh: these five talks' files, concatenated in this order.
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
_TRAIN_TAG_LINES = ("<url>", "<talkid>", "<keywords>")
_TRAIN_TAGS = re.compile(r"</?(title|description)>")
_SEGMENT = re.compile(r'<seg id="[0-9]*">\s*(.*?)\s*</seg>')


def data_paths(data_dir: str | Path) -> dict[str, Path]:
    root = Path(data_dir) / "iwslt14"
    return {
        "archive": root / "orig" / "de-en.tgz",
        "text": root / "iwslt14.tokenized.de-en",
        "bin": root / "data-bin",
    }


def check_data(data_bin: str | Path, data_dir: str | Path = "data") -> Path:
    """The binarised dataset directory, or a DatasetNotFoundError that says how to make it."""
    data_bin = Path(data_bin)
    needed = [data_bin / f"dict.{lang}.txt" for lang in (SRC, TGT)]
    needed += [data_bin / f"{split}.{SRC}-{TGT}.{SRC}.bin" for split in ("train", "valid", "test")]
    if all(path.is_file() for path in needed):
        return data_bin
    archive = data_paths(data_dir)["archive"]
    raise DatasetNotFoundError(
        "iwslt14_de_en",
        [str(path) for path in needed if not path.is_file()],
        f"put the IWSLT14 De-En archive at {archive} (from {IWSLT14_URL} or a mirror), then run\n"
        f"    {PREPARE_COMMAND.format(data_dir=data_dir)}\n"
        "(fairseq's prepare-iwslt14.sh steps + fairseq-preprocess; add --download to fetch the archive)",
    )


def _clean_train_lines(lines: Iterable[str]) -> Iterator[str]:
    """prepare-iwslt14.sh's filter of train.tags files: drop the talk metadata, keep title text."""
    for line in lines:
        if not any(tag in line for tag in _TRAIN_TAG_LINES):
            yield _TRAIN_TAGS.sub("", line).rstrip("\n")


def _segments(xml_text: str) -> list[str]:
    """The <seg> contents of an IWSLT xml file, with the script's ’ -> ' replacement."""
    return [m.group(1).replace("\u2019", "'") for m in _SEGMENT.finditer(xml_text)]


def _keep_pair(
    src: str, tgt: str, ratio: float = 1.5, min_len: int = 1, max_len: int = 175
) -> bool:
    """Moses clean-corpus-n.perl with `-ratio 1.5 ... 1 175`, on whitespace tokens."""
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if not (min_len <= n_src <= max_len and min_len <= n_tgt <= max_len):
        return False
    return n_src / n_tgt <= ratio and n_tgt / n_src <= ratio


def prepare(
    data_dir: str | Path,
    *,
    archive: str | Path | None = None,
    download: bool = False,
    bpe_tokens: int = 10000,
    workers: int = 1,
) -> Path:
    """prepare-iwslt14.sh + fairseq-preprocess; returns the binarised dataset directory."""
    from sacremoses import MosesTokenizer
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    paths = data_paths(data_dir)
    archive = Path(archive) if archive else paths["archive"]
    if not archive.is_file():
        if not download:
            raise DatasetNotFoundError(
                "iwslt14_de_en archive",
                [str(archive)],
                f"download {IWSLT14_URL} (or a mirror) to {archive}, or pass --download",
            )
        archive.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", IWSLT14_URL)
        urllib.request.urlretrieve(IWSLT14_URL, archive)

    tokenizers = {lang: MosesTokenizer(lang=lang) for lang in (SRC, TGT)}

    def tokenize(lang: str, lines: Iterable[str]) -> list[str]:
        tok = tokenizers[lang]
        return [tok.tokenize(line, return_str=True, escape=True) for line in lines]

    log.info("tokenising %s", archive)
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> str:
            return tar.extractfile(members[name]).read().decode("utf-8")

        train = {
            lang: tokenize(lang, _clean_train_lines(read(f"train.tags.de-en.{lang}").splitlines()))
            for lang in (SRC, TGT)
        }
        test = {
            lang: [
                line.lower()
                for name in TEST_SETS
                for line in tokenize(lang, _segments(read(f"{name}.de-en.{lang}.xml")))
            ]
            for lang in (SRC, TGT)
        }
    pairs = [
        (s.lower(), t.lower())
        for s, t in zip(train[SRC], train[TGT], strict=True)
        if _keep_pair(s, t)
    ]
    # awk 'NR%23 == 0' on 1-based line numbers: every 23rd pair is validation.
    splits = {
        "train": [p for i, p in enumerate(pairs, 1) if i % 23 != 0],
        "valid": [p for i, p in enumerate(pairs, 1) if i % 23 == 0],
        "test": list(zip(test[SRC], test[TGT], strict=True)),
    }

    text = paths["text"]
    text.mkdir(parents=True, exist_ok=True)
    code = text / "code"
    log.info("learning %d BPE merges", bpe_tokens)
    joint = [line + "\n" for lang in (0, 1) for line in (p[lang] for p in splits["train"])]
    with code.open("w") as out:
        learn_bpe(joint, out, bpe_tokens)
    with code.open() as f:
        bpe = BPE(f)
    for split, split_pairs in splits.items():
        for i, lang in enumerate((SRC, TGT)):
            lines = (bpe.process_line(p[i] + "\n") for p in split_pairs)
            (text / f"{split}.{lang}").write_text("".join(lines))
    return binarize(text, paths["bin"], workers=workers)


def binarize(text_dir: Path, data_bin: Path, *, workers: int = 1) -> Path:
    """fairseq-preprocess of text_dir/{train,valid,test}.{de,en} into data_bin (the recipe's call)."""
    command = [
        fairseq_tool("fairseq-preprocess"),
        *("--source-lang", SRC, "--target-lang", TGT),
        *("--trainpref", str(text_dir / "train")),
        *("--validpref", str(text_dir / "valid")),
        *("--testpref", str(text_dir / "test")),
        *("--destdir", str(data_bin), "--workers", str(workers)),
    ]
    run_logged(command, data_bin.parent / "preprocess.log")
    return data_bin


def write_synthetic_corpus(
    text_dir: Path, *, n_train: int = 300, n_eval: int = 30, vocab: int = 12, seed: int = 0
) -> dict[str, int]:
    """A tiny learnable parallel corpus in the prepared-text layout: each source word `dK` translates to
    `eK` and sentence length varies from 2 to 6 words. Returns the number of pairs per split."""
    rng = random.Random(seed)
    sizes = {"train": n_train, "valid": n_eval, "test": n_eval}
    text_dir.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        words = [[rng.randrange(vocab) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        for lang, prefix in ((SRC, "d"), (TGT, "e")):
            lines = (" ".join(f"{prefix}{w}" for w in sentence) + "\n" for sentence in words)
            (text_dir / f"{split}.{lang}").write_text("".join(lines))
    return sizes


def dataset(cfg: DictConfig, work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The binarised dataset of a run and its description for run.json: the prepared IWSLT14 corpus, or
    with `profile.synthetic` a stand-in corpus generated into the run's work directory."""
    synthetic = bool(cfg.profile.synthetic)
    if synthetic:
        text = work_dir / "synthetic"
        sizes = write_synthetic_corpus(text, seed=0)
        data_bin = binarize(text, work_dir / "synthetic-bin")
        source = "generated word-for-word translations (iwslt14.data.write_synthetic_corpus)"
        name = "iwslt14_de_en (synthetic stand-in)"
    else:
        data_bin = check_data(Path(cfg.data_dir) / cfg.fairseq.data_subdir, cfg.data_dir)
        sizes = {}
        source = f"IWSLT14 De-En, fairseq prepare-iwslt14.sh preparation ({data_bin})"
        name = "iwslt14_de_en"
    info = {
        "dataset": name,
        "source": source,
        "synthetic": synthetic,
        "n_train": sizes.get("train"),
        "n_val": sizes.get("valid"),
        "loss": "label-smoothed cross-entropy, bits per target token (fairseq)",
    }
    return data_bin, info


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MOMO_DATA_DIR", "data"))
    parser.add_argument("--archive", help="de-en.tgz (default: DATA_DIR/iwslt14/orig/de-en.tgz)")
    parser.add_argument("--download", action="store_true", help=f"fetch {IWSLT14_URL} if missing")
    parser.add_argument("--bpe-tokens", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    data_bin = prepare(
        args.data_dir,
        archive=args.archive,
        download=args.download,
        bpe_tokens=args.bpe_tokens,
        workers=args.workers,
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("binarised IWSLT14 De-En in %s", data_bin)


if __name__ == "__main__":
    main()
