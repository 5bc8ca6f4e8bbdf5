"""The IWSLT14 workload: its fairseq command lines, the record converter (with the same step statistics
as the training loop), the data preparation, and runs through `experiments.train` whose records pass the
schema check of every record."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import tarfile

import pytest
import torch
from _toy_task import compose_config
from record_schema import check_record

from experiments.data import DatasetNotFoundError
from experiments.runner import loop, records, train
from experiments.workloads.iwslt14 import commands, convert, data

needs_fairseq = pytest.mark.skipif(
    importlib.util.find_spec("fairseq") is None, reason="needs fairseq: scripts/install_fairseq.sh"
)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _compose(*overrides: str):
    return compose_config("experiment=iwslt14", *overrides)


# --------------------------------------------------------------------------- command lines


def test_iwslt14_train_command_follows_the_recipe(tmp_path):
    cfg = _compose("optimizer=adam", "optimizer.lr=5e-4", "fairseq.dropout=0.1")
    command = commands.train_command(cfg, tmp_path / "bin", tmp_path / "work")
    joined = " ".join(command)
    for expected in (
        "--arch transformer_iwslt_de_en --share-decoder-input-output-embed",
        "--optimizer adam --lr 0.0005 --weight-decay 0.0001 --adam-betas (0.9, 0.98)",
        "--lr-scheduler inverse_sqrt --warmup-updates 4000",
        "--criterion label_smoothed_cross_entropy --label-smoothing 0.1 --report-accuracy",
        "--max-tokens 4096",
        "--dropout 0.1",
        "--clip-norm 0.0",
        "--eval-bleu",
    ):
        assert expected in joined
    assert "--momo-trace" not in command
    plain = _compose("fairseq.criterion=cross_entropy")  # fairseq's cross_entropy has no accuracy
    assert "--report-accuracy" not in commands.train_command(plain, tmp_path, tmp_path)
    momo = commands.train_command(_compose(), tmp_path / "bin", tmp_path / "work")
    assert momo[momo.index("--optimizer") + 1] == "momo_adam_star"
    assert momo[momo.index("--momo-trace") + 1] == str(tmp_path / "work" / "momo_trace.csv")
    assert "--max-update" not in momo  # the default profile trains whole epochs
    smoke = commands.train_command(_compose("profile=smoke"), tmp_path / "bin", tmp_path / "work")
    assert smoke[smoke.index("--max-update") + 1] == "6"  # 2 epochs of at most 3 updates
    assert smoke[smoke.index("--arch") + 1] == "transformer"  # configs/sizes/smoke_iwslt14.yaml
    assert smoke[smoke.index("--encoder-layers") + 1] == "1"


def test_iwslt14_rejects_what_fairseq_cannot_run_before_writing(tmp_path):
    for override, message in (
        ("optimizer=sgd_m", "no fairseq counterpart"),
        ("amp=bf16", "fp32"),
        ("+weight_decay_exempt=bias_and_norm", "fairseq's optimizers decay every parameter"),
    ):
        cfg = _compose(override, f"results_dir={tmp_path}")
        with pytest.raises(ValueError, match=message):
            train.train(cfg)
    assert not any(tmp_path.rglob("*"))


# --------------------------------------------------------------------------- fairseq output -> records

# lr 0.25 caps the adaptive steps 0.5 and 1.0: half of these steps are capped (tau < t1)
STEPS = [(0.125, 0.125, -1.0), (0.25, 0.5, -0.5), (0.0625, 0.0625, -0.25), (0.25, 1.0, 0.0)]


def test_step_statistics_are_the_same_in_the_loop_and_the_iwslt14_converter() -> None:
    """One trace through the training loop's step log and through the fairseq converter."""
    steps = loop.StepLog(epoch=1)
    for step, (tau, t1, lb) in enumerate(STEPS, 1):
        group = {"lr": 0.25, "step_size": torch.tensor(tau), "adaptive_step": torch.tensor(t1)}
        group["lb_estimate"] = torch.tensor(lb)
        steps.record(step, torch.tensor(1.0), group, torch.tensor(1.0))
    in_loop = {k: v for k, v in steps.finish().summary().items() if k.startswith("optim/")}
    fairseq_log = {
        "train_inner": [],
        "valid": [],
        "train": [{"epoch": 1.0, "train_loss": 1.0, "train_lr": 0.25, "train_num_updates": 4.0}],
    }
    trace = [
        {"step": float(u), "lr": 0.25, "step_size": tau, "adaptive_step": t1, "lb_estimate": lb}
        for u, (tau, t1, lb) in enumerate(STEPS, 1)
    ]
    (row,) = convert.epoch_metrics(fairseq_log, trace)
    in_iwslt = {k: v for k, v in row.items() if k.startswith("optim/")}
    assert in_loop["optim/cap_fraction"] == 0.5  # tau < t1: the cap bound
    assert in_loop["optim/step_size_median"] == 0.1875  # the mean of the two middle values
    assert in_iwslt == in_loop


def test_iwslt14_converter_reads_fairseq_logs():
    text = "\n".join(
        [
            '2024 | INFO | train_inner | {"epoch": 1, "loss": "5.0", "lr": "1e-4", "num_updates": "1"}',
            '2024 | INFO | train_inner | {"epoch": 1, "loss": "4.0", "lr": "2e-4", "num_updates": "2"}',
            # fairseq-train --report-accuracy: n_correct / total target tokens, in percent
            '2024 | INFO | valid | {"epoch": 1, "valid_loss": "4.5", "valid_nll_loss": "4.4", '
            '"valid_total": "110", "valid_n_correct": "7", "valid_ppl": "21.1", '
            '"valid_accuracy": "6.364", "valid_bleu": "3.25", "valid_num_updates": "2"}',
            '2024 | INFO | train | {"epoch": 1, "train_loss": "4.5", "train_lr": "2e-4", '
            '"train_num_updates": "2", "train_gnorm": "1.5", "train_wall": "7"}',
            "Generate test with beam=5: BLEU4 = 34.41, 67.5/46.9/34.4/25.5 (BP=1.000)",
        ]
    )
    log = convert.read_fairseq_log(text)
    steps = [
        {
            "step": 1.0,
            "lr": 1e-4,
            "step_size": 1e-4,
            "adaptive_step": 0.5,
            "lb_estimate": math.nan,
            "loss": 3.0,
        },
        {
            "step": 2.0,
            "lr": 2e-4,
            "step_size": 0.1,
            "adaptive_step": 0.1,
            "lb_estimate": 1.0,
            "loss": 2.5,
        },
    ]
    (row,) = convert.epoch_metrics(log, steps)
    assert row["epoch"] == 1 and row["val/loss"] == 4.5 and row["val/score"] == 3.25
    assert row["val/token_acc"] == pytest.approx(
        7 / 110, abs=5e-6
    )  # in [0, 1]; BLEU stays the score
    without = convert.read_fairseq_log(text.replace('"valid_accuracy": "6.364", ', ""))
    assert convert.epoch_metrics(without, steps)[0]["val/token_acc"] is None  # another criterion
    assert row["optim/cap_fraction"] == 0.5 and "optim/lb_estimate" not in row  # one step has none
    assert convert.parse_bleu(text) == 34.41
    fallback = convert.trace_rows(log, [], max_rows=10)  # Adam: fairseq's own log lines
    assert [(r["step"], r["lr"], r["epoch"]) for r in fallback] == [(1, 1e-4, 1), (2, 2e-4, 1)]
    assert len(convert.trace_rows(log, steps * 10, max_rows=5)) == 5


# --------------------------------------------------------------------------- data


def test_iwslt14_missing_dataset_names_the_preparation_command_and_writes_nothing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"scripts/prepare_iwslt14\.sh") as error:
        data.check_data(tmp_path / "iwslt14" / "data-bin", tmp_path)
    assert "de-en.tgz" in str(error.value)
    cfg = _compose(f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path}", "device=cpu")
    with pytest.raises(DatasetNotFoundError):
        train.train(cfg)  # as the training loop: missing data raise before anything is written
    assert not (tmp_path / "results").exists()


def _xml(segments: list[str]) -> str:
    body = "\n".join(f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segments, 1))
    return f"<mteval>\n<doc>\n{body}\n</doc>\n</mteval>\n"


@needs_fairseq
def test_iwslt14_prepare_follows_fairseq_script(tmp_path):
    german = [f"Das ist Satz Nummer {i}." for i in range(46)]
    english = [f"This is sentence number {i}." for i in range(46)]
    files = {
        f"de-en/train.tags.de-en.{lang}": "<url>http://x</url>\n<talkid>1</talkid>\n"
        + "<title>Ein Titel</title>\n" * (lang == "de")
        + "<title>A title</title>\n" * (lang == "en")
        + "\n".join(lines)
        + "\n"
        for lang, lines in (("de", german), ("en", english))
    }
    for name in data.TEST_SETS:
        files[f"de-en/{name}.de-en.de.xml"] = _xml(["Hallo Welt", "Wie geht’s"])
        files[f"de-en/{name}.de-en.en.xml"] = _xml(["Hello world", "How are you"])
    archive = tmp_path / "de-en.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            content = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))

    data_bin = data.prepare(tmp_path / "data", archive=archive, bpe_tokens=50)

    text = tmp_path / "data" / "iwslt14" / "iwslt14.tokenized.de-en"
    plain = {f.name: f.read_text().replace("@@ ", "").splitlines() for f in text.glob("*.??")}
    # 47 pairs (the title, kept without its tags, and 46 sentences); pairs 23 and 46 are validation.
    assert plain["valid.en"] == ["this is sentence number 21 .", "this is sentence number 44 ."]
    assert len(plain["train.de"]) == 45 and plain["train.de"][0] == "ein titel"
    assert plain["test.de"][:2] == ["hallo welt", "wie geht &apos; s"]  # Moses splits it for German
    assert len(plain["test.en"]) == 10
    assert data.check_data(data_bin) == data_bin


# --------------------------------------------------------------------------- runs


@needs_fairseq
def test_iwslt14_failed_run_is_recorded_and_returned_so_a_multirun_goes_on(tmp_path):
    """fairseq-train fails (an option it does not know): the run records the failure with its traceback,
    in the format of every record, and returns it instead of raising, as the training loop does."""
    cfg = _compose("profile=smoke", f"results_dir={tmp_path}", "fairseq.extra_args=[--bogus]")
    info = train.train(cfg)
    assert info["status"] == "failed" and "--bogus" in info["error"]
    assert check_record(records.run_paths(cfg).record) == info


@needs_fairseq
@pytest.mark.slow
def test_iwslt14_smoke_run_writes_a_record(tmp_path):
    cfg = _compose("profile=smoke", f"results_dir={tmp_path}", "fairseq.update_freq=2")
    info = train.train(cfg)
    record = records.run_paths(cfg).record
    assert check_record(record) == info
    assert info["status"] == "completed" and info["score_name"] == "bleu"
    assert info["data"]["synthetic"] is True and info["epochs_done"] == 2
    assert info["device"] == {"type": "cpu", "name": "cpu", "world_size": 1, "amp": "none"}
    metrics = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[-1]["val/loss"]) and "test/score" in metrics[-1]
    assert all(0.0 <= row["val/token_acc"] <= 1.0 for row in metrics)
    assert info["final"]["val/token_acc"] == metrics[-1]["val/token_acc"]
    assert 0.0 <= metrics[-1]["optim/cap_fraction"] <= 1.0
    with (record / "trace.csv").open() as f:
        trace = list(csv.DictReader(f))
    assert len(trace) == 4 and all(float(r["adaptive_step"]) > 0 for r in trace)
    assert [int(r["epoch"]) for r in trace] == [1, 1, 2, 2]
    assert train.train(cfg) == info  # finished: a rerun returns at once
