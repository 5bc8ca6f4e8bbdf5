"""The fairseq command lines of one IWSLT14 run, and running fairseq's tools.

`train_command` is the `fairseq-train` command line of the recipe (configs/experiment/iwslt14.yaml's
`fairseq` block) with our optimizer and schedule; the MoMo optimizers come from the `--user-dir` plugin
(experiments/workloads/iwslt14/fairseq_plugin), which writes MoMo's per-update step sizes to
`momo_trace.csv` in the run's work directory. `generate_command` scores the test set.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.layout import REPO_ROOT

log = logging.getLogger(__name__)

PLUGIN_DIR = Path(__file__).resolve().parent / "fairseq_plugin"
SRC, TGT = "de", "en"
STEP_TRACE = "momo_trace.csv"  # the plugin's per-update trace, in the run's work directory
# fairseq's `adam` is AdamW (decoupled weight decay), so both adam and adamw map to it; the plugin's
# options mirror Adam's.
OPTIMIZERS = {
    "adam": "adam",
    "adamw": "adam",
    **{name: name for name in ("momo", "momo_star", "momo_adam", "momo_adam_star")},
}


def check(cfg: DictConfig) -> None:
    """Raise before anything runs when the config has no fairseq counterpart."""
    if cfg.optimizer.name not in OPTIMIZERS:
        raise ValueError(
            f"Optimizer {cfg.optimizer.name!r} has no fairseq counterpart; use one of "
            f"{sorted(OPTIMIZERS)}"
        )
    _schedule_args(cfg.schedule)
    if cfg.get("weight_decay_exempt") is not None:
        raise ValueError(
            f"Invalid weight_decay_exempt for fairseq: {cfg.weight_decay_exempt!r} (null: fairseq's "
            "optimizers decay every parameter)"
        )
    if cfg.amp != "none":
        raise ValueError(
            f"Invalid amp for fairseq: {cfg.amp!r} (MoMo in fairseq runs in fp32: none)"
        )


def _optimizer_args(optimizer: DictConfig) -> list[str]:
    """Our optimizer config (configs/optimizer/*.yaml) as fairseq options."""
    args = ["--optimizer", OPTIMIZERS[optimizer.name], "--lr", _num(optimizer.lr)]
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


def _accuracy_args(criterion: str) -> list[str]:
    """Token accuracy in the logs (`valid_accuracy`: val/token_acc), where the criterion computes it."""
    return ["--report-accuracy"] if criterion == "label_smoothed_cross_entropy" else []


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
    check(cfg)
    fs = cfg.fairseq
    momo = cfg.optimizer.name.startswith("momo")
    command = [
        fairseq_tool("fairseq-train"),
        str(data_bin),
        *("--user-dir", str(PLUGIN_DIR), "--task", "translation"),
        *("--source-lang", SRC, "--target-lang", TGT),
        *("--arch", fs.model.arch),
        *_flags(fs.model.get("args", {})),
        *("--dropout", _num(fs.dropout)),
        *("--criterion", fs.criterion, "--label-smoothing", _num(fs.label_smoothing)),
        *_accuracy_args(fs.criterion),
        *("--max-tokens", str(fs.max_tokens), "--update-freq", str(fs.update_freq)),
        *("--clip-norm", _num(fs.clip_norm)),
        *_optimizer_args(cfg.optimizer),
        *_schedule_args(cfg.schedule),
        *("--max-epoch", str(cfg.epochs), "--seed", str(cfg.seed)),
        *("--save-dir", str(work_dir / "checkpoints"), "--no-epoch-checkpoints"),
        *("--log-format", "json", "--log-interval", str(fs.log_interval)),
        *("--num-workers", str(fs.num_workers)),
        *(("--momo-trace", str(work_dir / STEP_TRACE)) if momo else ()),
    ]
    if cfg.profile.max_train_batches is not None:  # the profile's cap on updates per epoch
        command += ["--max-update", str(cfg.epochs * cfg.profile.max_train_batches)]
    if fs.eval_bleu:
        command += [
            "--eval-bleu",
            "--eval-bleu-args",
            json.dumps({"beam": fs.beam, "max_len_a": 1.2, "max_len_b": 10}),
            *("--eval-bleu-detok", "moses", "--eval-bleu-remove-bpe"),
            *("--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"),
        ]
    if device(cfg) == "cpu":
        command.append("--cpu")
    return command + [str(arg) for arg in fs.extra_args]


def generate_command(cfg: DictConfig, data_bin: Path, checkpoint: Path) -> list[str]:
    """fairseq-generate on the test set, as in fairseq's IWSLT14 README (beam 5, BPE removed)."""
    command = [
        fairseq_tool("fairseq-generate"),
        str(data_bin),
        *("--user-dir", str(PLUGIN_DIR), "--path", str(checkpoint)),
        *("--gen-subset", "test", "--beam", str(cfg.fairseq.beam)),
        *("--batch-size", "128", "--remove-bpe", "--scoring", cfg.fairseq.scoring),
    ]
    if device(cfg) == "cpu":
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


def device(cfg: DictConfig) -> str:
    """ "cpu" or "cuda": where fairseq runs (fairseq uses every visible GPU)."""
    if cfg.device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(cfg.device)


def fairseq_tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The plugin imports `momo` and `experiments` from this repository; fairseq's checkpoints hold
    # Python objects that torch>=2.6 refuses to unpickle by default.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return env


def run_logged(command: Sequence[str], log_file: Path) -> str:
    """Run a fairseq tool, its stdout and stderr going to log_file; raise with the log's tail on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("running %s", " ".join(command))
    with log_file.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env())
    output = log_file.read_text()
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{command[0]} failed with exit code {result.returncode}:\n{tail}")
    return output
