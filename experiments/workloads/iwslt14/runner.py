"""One IWSLT14 run: `fairseq-train`, then `fairseq-generate` on the test set, then one run record.

`experiments.train` hands every config with `runner: experiments.workloads.iwslt14.runner` to this module:
`check` before anything is written, then, unless a finished record returns at once, `run` under the
run's lock, so that

    python -m experiments.train experiment=iwslt14 optimizer=momo_adam_star optimizer.lr=1e-3

runs this workload like any other, multiruns and sweeps included. The run follows the training loop's
failure handling: an invalid config or missing data raises before anything is written; a failure of
fairseq is recorded as `failed` with its traceback and returned, so a multirun goes on, and the rerun
resumes from fairseq's checkpoint_last.pt in the run's work directory.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.runner import records
from experiments.workloads.iwslt14 import commands, convert, data

log = logging.getLogger(__name__)

# distributions recorded in run.json besides the suite's own
VERSIONS = ("fairseq-fixed", "sacrebleu", "sacremoses", "subword-nmt")


def check(cfg: DictConfig) -> None:
    """Raises before anything is written when fairseq cannot run the config (commands.check) or the
    prepared dataset is missing (`DatasetNotFoundError`)."""
    commands.check(cfg)
    if not cfg.profile.synthetic:
        data.check_data(Path(cfg.data_dir) / cfg.fairseq.data_subdir, cfg.data_dir)


def run(cfg: DictConfig) -> dict:
    """Train, evaluate and record one IWSLT14 run; returns its run.json."""
    paths = records.run_paths(cfg)
    data_bin, data_info = data.dataset(cfg, paths.work)
    start = time.monotonic()
    metrics: list[dict] = []
    trace: list[dict] = []
    try:
        output = commands.run_logged(
            commands.train_command(cfg, data_bin, paths.work), paths.work / "train.log"
        )
        fairseq_log = convert.read_fairseq_log(output)
        steps = convert.in_bits(convert.read_step_trace(paths.work / commands.STEP_TRACE))
        metrics = convert.epoch_metrics(fairseq_log, steps)
        trace = convert.trace_rows(fairseq_log, steps, cfg.trace_rows)
        checkpoint = paths.work / "checkpoints" / cfg.fairseq.test_checkpoint
        generated = commands.run_logged(
            commands.generate_command(cfg, data_bin, checkpoint), paths.work / "generate.log"
        )
        if metrics:
            metrics[-1]["test/score"] = convert.parse_bleu(generated)
        losses = [row["train/loss"] for row in metrics]
        status = "completed" if losses and all(map(math.isfinite, losses)) else "diverged"
        error = None
    except Exception:
        log.exception("run %s failed", paths.run_id)
        status, error = "failed", traceback.format_exc()
    device = torch.device(commands.device(cfg))
    # fairseq trains on every visible GPU (its default --distributed-world-size)
    world_size = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    info = records.run_info(
        cfg,
        status=status,
        metrics=metrics,
        score_name="bleu",
        higher_is_better=True,
        wall_time_s=time.monotonic() - start,
        device=records.device_info(device, world_size=world_size, amp=cfg.amp),
        data=data_info,
        error=error,
        versions=VERSIONS,
    )
    where = records.write_record(paths, config=cfg, metrics=metrics, trace=trace, info=info)
    log.info("%s %s after %d epochs: %s", paths.run_id, status, len(metrics), where)
    return info
