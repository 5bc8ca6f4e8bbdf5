"""IWSLT14 De-En with fairseq: data preparation, the ``fairseq-train`` launcher and the record converter.

fairseq owns the training loop of this workload (its transformer, token-based batching, inverse-sqrt
schedule, checkpoints and BLEU); this module connects it to the suite:

1. ``prepare``: fairseq's ``examples/translation/prepare-iwslt14.sh`` (Moses tokenisation, cleaning,
   lowercasing, a 1/23 validation split, joint BPE with 10k merges) with sacremoses and subword-nmt, then
   ``fairseq-preprocess``. ``write_synthetic_corpus`` makes the stand-in of the smoke profile.
2. ``train_command``: the ``fairseq-train`` command line of the recipe, from the Hydra config; the MoMo
   optimizers come from the ``--user-dir`` plugin ``experiments/fairseq_plugin``.
3. ``read_fairseq_log``, ``read_step_trace``, ``parse_bleu``: fairseq's output in our record format
   (docs/design.md §4), so that aggregate and plot read these runs like any other.
4. ``run``: 2, then ``fairseq-generate`` on the test set, then 3, written as one run record.
5. ``plot_schedule_and_steps``: the lr schedule (black) with MoMo's adaptive steps (grey dots).

Units: losses in the record are fairseq's, label-smoothed cross-entropy in bits per target token (the
trace's MoMo loss, which MoMo sees in nats, is converted to match). ``epoch`` counts from 0.

    python -m experiments.iwslt14 prepare --data-dir data            # after placing de-en.tgz
    python -m experiments.iwslt14 experiment=iwslt14 optimizer=momo_adam_star optimizer.lr=1e-3
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.data import DatasetNotFoundError
from experiments.layout import REPO_ROOT
from experiments.runner import records

logger = logging.getLogger(__name__)

PLUGIN_DIR = Path(__file__).resolve().parent / "fairseq_plugin"
IWSLT14_URL = (
    "https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz"  # prepare-iwslt14.sh's source
)
SRC, TGT = "de", "en"
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
_BLEU = re.compile(r"\bBLEU4? = ([0-9.]+)")
_LOG_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")


# --------------------------------------------------------------------------- data


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
        logger.info("downloading %s", IWSLT14_URL)
        urllib.request.urlretrieve(IWSLT14_URL, archive)

    tokenizers = {lang: MosesTokenizer(lang=lang) for lang in (SRC, TGT)}

    def tokenize(lang: str, lines: Iterable[str]) -> list[str]:
        tok = tokenizers[lang]
        return [tok.tokenize(line, return_str=True, escape=True) for line in lines]

    logger.info("tokenising %s", archive)
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
    logger.info("learning %d BPE merges", bpe_tokens)
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
        _fairseq_tool("fairseq-preprocess"),
        *("--source-lang", SRC, "--target-lang", TGT),
        *("--trainpref", str(text_dir / "train")),
        *("--validpref", str(text_dir / "valid")),
        *("--testpref", str(text_dir / "test")),
        *("--destdir", str(data_bin), "--workers", str(workers)),
    ]
    _run_logged(command, data_bin.parent / "preprocess.log")
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


# --------------------------------------------------------------------------- command lines


def _optimizer_args(optimizer: DictConfig) -> list[str]:
    """Our optimizer config (configs/optimizer/*.yaml) as fairseq options. fairseq's `adam` is AdamW
    (decoupled weight decay), so both adam and adamw map to it; the plugin's options mirror Adam's."""
    names = {"adam": "adam", "adamw": "adam", **{n: n for n in ("momo", "momo_star")}}
    names |= {"momo_adam": "momo_adam", "momo_adam_star": "momo_adam_star"}
    if optimizer.name not in names:
        raise ValueError(
            f"Optimizer {optimizer.name!r} has no fairseq counterpart; use one of {sorted(names)}"
        )
    args = ["--optimizer", names[optimizer.name], "--lr", _num(optimizer.lr)]
    args += ["--weight-decay", _num(optimizer.get("weight_decay", 0.0))]
    if "betas" in optimizer:
        args += ["--adam-betas", "({}, {})".format(*(_num(b) for b in optimizer.betas))]
    if "eps" in optimizer:
        args += ["--adam-eps", _num(optimizer.eps)]
    if "beta" in optimizer:
        args += ["--momo-beta", _num(optimizer.beta)]
    if "lb" in optimizer:
        args += ["--momo-lb", _num(optimizer.lb)]
    if optimizer.get("bias_correction", False):
        args += ["--momo-bias-correction"]
    if not optimizer.get("divide", True):
        args += ["--momo-decoupled-decay"]
    return args


def _schedule_args(schedule: DictConfig) -> list[str]:
    if schedule.name == "inverse_sqrt":
        return ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(schedule.warmup)]
    if schedule.name == "constant":
        return ["--lr-scheduler", "fixed"]
    raise ValueError(
        f"Schedule {schedule.name!r} has no fairseq counterpart; use inverse_sqrt or constant"
    )


def train_command(cfg: DictConfig, data_bin: Path, work_dir: Path) -> list[str]:
    """The fairseq-train command line of one run: the recipe of cfg.fairseq, our optimizer and schedule,
    logs as JSON lines on stdout, checkpoints (resumed automatically) and the MoMo trace in work_dir."""
    fs = cfg.fairseq
    if _synthetic(cfg):  # from plain containers: the smoke keys may add model args
        fs = OmegaConf.merge(OmegaConf.to_container(fs), OmegaConf.to_container(fs.smoke))
    model = fs.model
    command = [
        _fairseq_tool("fairseq-train"),
        str(data_bin),
        *("--user-dir", str(PLUGIN_DIR), "--task", "translation"),
        *("--source-lang", SRC, "--target-lang", TGT),
        *("--arch", model.arch),
        *_flags(model.get("args", {})),
        *("--dropout", _num(fs.dropout)),
        *("--criterion", fs.criterion, "--label-smoothing", _num(fs.label_smoothing)),
        *("--max-tokens", str(fs.max_tokens), "--update-freq", str(fs.update_freq)),
        *("--clip-norm", _num(fs.clip_norm)),
        *_optimizer_args(cfg.optimizer),
        *_schedule_args(cfg.schedule),
        *("--max-epoch", str(cfg.epochs), "--seed", str(cfg.seed)),
        *("--save-dir", str(work_dir / "checkpoints"), "--no-epoch-checkpoints"),
        *("--log-format", "json", "--log-interval", str(fs.log_interval)),
        *("--num-workers", str(fs.num_workers)),
        "--momo-trace" if cfg.optimizer.name.startswith("momo") else "",
        str(work_dir / "momo_trace.csv") if cfg.optimizer.name.startswith("momo") else "",
    ]
    if _synthetic(cfg):
        command += ["--max-update", str(cfg.epochs * cfg.profile.max_train_batches)]
    if fs.eval_bleu:
        command += [
            "--eval-bleu",
            "--eval-bleu-args",
            json.dumps({"beam": fs.beam, "max_len_a": 1.2, "max_len_b": 10}),
            *("--eval-bleu-detok", "moses", "--eval-bleu-remove-bpe"),
            *("--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"),
        ]
    if _device(cfg) == "cpu":
        command.append("--cpu")
    command += [str(arg) for arg in fs.extra_args]
    return [arg for arg in command if arg != ""]


def generate_command(cfg: DictConfig, data_bin: Path, checkpoint: Path) -> list[str]:
    """fairseq-generate on the test set, as in fairseq's IWSLT14 README (beam 5, BPE removed)."""
    command = [
        _fairseq_tool("fairseq-generate"),
        str(data_bin),
        *("--user-dir", str(PLUGIN_DIR), "--path", str(checkpoint)),
        *("--gen-subset", "test", "--beam", str(cfg.fairseq.beam)),
        *("--batch-size", "128", "--remove-bpe", "--scoring", cfg.fairseq.scoring),
    ]
    if _device(cfg) == "cpu":
        command.append("--cpu")
    return command


def _flags(options: dict[str, Any]) -> list[str]:
    """{encoder_layers: 1, share_decoder_input_output_embed: true} -> --encoder-layers 1 --share-..."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, _num(value) if isinstance(value, float) else str(value)]
    return out


def _num(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _synthetic(cfg: DictConfig) -> bool:
    return bool(cfg.get("profile", {}).get("synthetic", False))


def _device(cfg: DictConfig) -> str:
    if cfg.device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _fairseq_tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The plugin imports `momo` from this repository; fairseq's checkpoints hold Python objects that
    # torch>=2.6 refuses to unpickle by default.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return env


def _run_logged(command: Sequence[str], log_file: Path) -> str:
    """Run a fairseq tool, its stdout and stderr going to log_file; raise with the log's tail on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running %s", " ".join(command))
    with log_file.open("w") as log:
        result = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env()
        )
    output = log_file.read_text()
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{command[0]} failed with exit code {result.returncode}:\n{tail}")
    return output


# --------------------------------------------------------------------------- fairseq output -> records


def read_fairseq_log(text: str) -> dict[str, list[dict[str, float]]]:
    """The JSON stats lines of a fairseq-train log (`--log-format json`), by kind: train_inner (every
    log interval), train and valid (one per epoch). Values become floats."""
    out: dict[str, list[dict[str, float]]] = {"train_inner": [], "train": [], "valid": []}
    for line in text.splitlines():
        match = _LOG_LINE.search(line)
        if match:
            out[match.group(1)].append({k: float(v) for k, v in json.loads(match.group(2)).items()})
    return out


def read_step_trace(path: Path) -> list[dict[str, float]]:
    """The plugin's per-update trace; after a resume repeated updates keep their last row."""
    if not path.is_file():
        return []
    with path.open() as f:
        rows = {int(row["update"]): row for row in csv.DictReader(f)}
    return [
        {k: float(v) if v != "" else math.nan for k, v in rows[u].items()} for u in sorted(rows)
    ]


def in_bits(trace: list[dict[str, float]]) -> list[dict[str, float]]:
    """The trace's loss and lb estimate (MoMo sees nats) in fairseq's logged unit, bits."""
    return [r | {k: r[k] / math.log(2) for k in ("loss", "lb_estimate")} for r in trace]


def parse_bleu(text: str) -> float | None:
    """The corpus BLEU of fairseq-generate's last summary line ("BLEU4 = 34.41, ..." or "BLEU = ...")."""
    scores = _BLEU.findall(text)
    return float(scores[-1]) if scores else None


def epoch_metrics(
    log: dict[str, list[dict[str, float]]], trace: list[dict[str, float]]
) -> list[dict]:
    """One metrics.jsonl row per fairseq epoch, with the optim/ statistics of MoMo's steps in it."""
    valid = {int(row["epoch"]): row for row in log["valid"]}
    rows, first_update = [], 1
    for train in log["train"]:
        epoch, last_update = int(train["epoch"]), int(train["train_num_updates"])
        val = valid.get(epoch, {})
        row = {
            "epoch": epoch - 1,
            "train/loss": train["train_loss"],
            "train/score": None,
            "val/loss": val.get("valid_loss"),
            "val/score": val.get("valid_bleu"),
            "lr": train["train_lr"],
            "grad_norm": train.get("train_gnorm"),
            "time_s": train.get("train_wall"),
        }
        steps = [r for r in trace if first_update <= r["update"] <= last_update]
        row |= _step_statistics(steps)
        rows.append(row)
        first_update = last_update + 1
    return rows


def _step_statistics(steps: list[dict[str, float]]) -> dict[str, float]:
    if not steps:
        return {}
    stats: dict[str, float] = {}
    for key in ("step_size", "adaptive_step"):
        values = sorted(r[key] for r in steps)
        stats |= {
            f"optim/{key}_median": values[len(values) // 2],
            f"optim/{key}_min": values[0],
            f"optim/{key}_max": values[-1],
        }
    stats["optim/cap_fraction"] = sum(r["adaptive_step"] >= r["step_size"] for r in steps) / len(
        steps
    )
    if not math.isnan(steps[-1]["lb_estimate"]):
        stats["optim/lb_estimate"] = steps[-1]["lb_estimate"]
    return stats


def trace_rows(
    log: dict[str, list[dict[str, float]]], trace: list[dict[str, float]], max_rows: int
) -> list[dict]:
    """trace.csv rows: MoMo's per-update trace when there is one, else fairseq's train_inner lines (lr and
    loss every log interval); thinned to about max_rows."""
    ends = [(int(t["train_num_updates"]), int(t["epoch"]) - 1) for t in log["train"]]

    def epoch_of(update: int) -> int:
        return next((e for last, e in ends if update <= last), ends[-1][1] if ends else 0)

    if trace:
        rows = [
            {
                "step": int(r["update"]),
                "loss": r["loss"],
                "lr": r["lr"],
                "step_size": r["step_size"],
                "adaptive_step": r["adaptive_step"],
                "lb_estimate": None if math.isnan(r["lb_estimate"]) else r["lb_estimate"],
            }
            for r in trace
        ]
    else:
        rows = [
            {"step": int(r["num_updates"]), "loss": r["loss"], "lr": r["lr"]}
            for r in log["train_inner"]
        ]
    every = max(1, math.ceil(len(rows) / max_rows))
    return [{**row, "epoch": epoch_of(row["step"])} for row in rows[::every]]


# --------------------------------------------------------------------------- one run


def run(cfg: DictConfig) -> Path:
    """Train, evaluate and record one IWSLT14 run; returns the record directory. A finished record of the
    same config returns at once; an interrupted one resumes from fairseq's checkpoint_last.pt."""
    paths = records.run_paths(cfg)
    if records.read_record(paths) is not None:
        logger.info("already done: %s", paths.record)
        return paths.record
    work_dir = paths.work
    start = time.time()
    info: dict[str, Any] = {"status": "failed", "error": None}
    metrics: list[dict] = []
    trace: list[dict] = []
    data: dict[str, Any] = {}
    try:
        data_bin, data = _dataset(cfg, work_dir)
        output = _run_logged(train_command(cfg, data_bin, work_dir), work_dir / "train.log")
        log = read_fairseq_log(output)
        steps = in_bits(read_step_trace(work_dir / "momo_trace.csv"))
        metrics = epoch_metrics(log, steps)
        trace = trace_rows(log, steps, cfg.trace_rows)
        checkpoint = work_dir / "checkpoints" / cfg.fairseq.test_checkpoint
        generated = _run_logged(
            generate_command(cfg, data_bin, checkpoint), work_dir / "generate.log"
        )
        if metrics:
            metrics[-1]["test/score"] = parse_bleu(generated)
        losses = [row["train/loss"] for row in metrics]
        info["status"] = "completed" if losses and all(map(math.isfinite, losses)) else "diverged"
    except Exception as error:  # recorded, then re-raised: a failed record is rerun next time
        info["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        info |= {
            "run_id": paths.run_id,
            "experiment": cfg.experiment,
            "optimizer": cfg.optimizer.name,
            "lr": cfg.optimizer.lr,
            "seed": cfg.seed,
            "epochs_done": len(metrics),
            "final": metrics[-1] if metrics else {},
            "score_name": "bleu",
            "higher_is_better": True,
            "wall_time_s": time.time() - start,
            "git_commit": records.git_commit(),
            "versions": records.package_versions() | _fairseq_version(),
            "device": _device(cfg),
            "data": data,
            "profile": cfg.get("profile", {}).get("name"),
        }
        records.write_record(paths, config=cfg, metrics=metrics, trace=trace, info=info)
    return paths.record


def _dataset(cfg: DictConfig, work_dir: Path) -> tuple[Path, dict[str, Any]]:
    if _synthetic(cfg):
        text = work_dir / "synthetic"
        sizes = write_synthetic_corpus(text, seed=0)
        data_bin = binarize(text, work_dir / "synthetic-bin")
        source = "generated word-for-word translations (experiments.iwslt14.write_synthetic_corpus)"
        dataset = "iwslt14_de_en (synthetic stand-in)"
    else:
        data_bin = check_data(Path(cfg.data_dir) / cfg.fairseq.data_subdir, cfg.data_dir)
        sizes = {}
        source = f"IWSLT14 De-En, fairseq prepare-iwslt14.sh preparation ({data_bin})"
        dataset = "iwslt14_de_en"
    info = {
        "dataset": dataset,
        "source": source,
        "synthetic": _synthetic(cfg),
        "n_train": sizes.get("train"),
        "n_val": sizes.get("valid"),
        "loss": "label-smoothed cross-entropy, bits per target token (fairseq)",
    }
    return data_bin, info


def _fairseq_version() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("fairseq-fixed", "sacrebleu", "sacremoses", "subword-nmt"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# --------------------------------------------------------------------------- figure


def plot_schedule_and_steps(trace: Any, ax: Any = None, *, every: int = 1) -> Any:
    """The lr schedule (black line) and MoMo's adaptive step t1 (grey dots) per update, from one run's
    trace (a DataFrame with step, lr, adaptive_step); the paper's IWSLT14 figure uses MoMo-Adam* at base
    lr 1e-3. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    dots = trace.dropna(subset=["adaptive_step"]).iloc[::every]
    ax.scatter(
        dots["step"], dots["adaptive_step"], s=2, c="grey", alpha=0.5, label=r"adaptive step $t_1$"
    )
    ax.plot(trace["step"], trace["lr"], c="black", lw=1.5, label="lr schedule")
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("step size")
    ax.legend(loc="upper right", frameon=False)
    return ax


# --------------------------------------------------------------------------- command line


def prepare_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.iwslt14 prepare", description=__doc__.split("\n")[0]
    )
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
    logger.info("binarised IWSLT14 De-En in %s", data_bin)


def train_main() -> None:
    import hydra

    @hydra.main(config_path="../configs", config_name="train", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        OmegaConf.resolve(cfg)
        logger.info("record: %s", run(cfg))

    _main()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if sys.argv[1:2] == ["prepare"]:
        prepare_main(sys.argv[2:])
    else:
        train_main()
