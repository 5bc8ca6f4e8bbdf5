"""The fairseq MoMo plugin and the IWSLT14 glue: loss bookkeeping, real fairseq-train runs on a generated
corpus, the recipe's command line, the record converter and the data preparation."""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments.data import DatasetNotFoundError
from experiments.workloads.iwslt14 import runner as iwslt14
from momo import MomoAdam

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fairseq") is None, reason="needs fairseq: scripts/install_fairseq.sh"
)

REPO = Path(__file__).resolve().parents[3]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _compose(*overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=["experiment=iwslt14", *overrides])


# --------------------------------------------------------------------------- loss bookkeeping


def _plugin():
    """The plugin, imported without leaving fairseq's schemas in Hydra's global ConfigStore: importing
    fairseq stores its own `optimizer/adam`, `task`, ... nodes there, which would clash with our configs
    when any later test in this process composes them."""
    store = ConfigStore.instance()
    pristine = copy.deepcopy(store.repo)
    import experiments.workloads.iwslt14.fairseq_plugin as plugin

    store.repo = pristine
    return plugin


def _wrapper(model: torch.nn.Module, lr: float = 1e-2):
    plugin = _plugin()
    cfg = OmegaConf.structured(plugin.FairseqMomoAdamConfig(lr=[lr], adam_betas="(0.9, 0.98)"))
    return plugin.FairseqMomoAdam(cfg, list(model.parameters()))


def _fairseq_update(opt, model, batches) -> None:
    """What fairseq's Trainer.train_step does: summed losses, backward per micro-batch, then one
    multiply_grads by 1/sample_size and a step without the loss."""
    opt.zero_grad()
    sample_size = 0
    for x, y in batches:
        opt.backward(torch.nn.functional.mse_loss(model(x), y, reduction="sum"))
        sample_size += y.numel()
    opt.multiply_grads(1.0 / sample_size)
    opt.step()


@pytest.mark.parametrize("update_freq", [1, 3])
def test_fairseq_momo_sees_the_mean_loss_of_its_gradient(update_freq):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    reference = copy.deepcopy(model)
    batches = [(torch.randn(5, 4), torch.randn(5, 1)) for _ in range(update_freq)]
    opt = _wrapper(model)
    seen = []
    opt.optimizer.step = lambda loss, _step=opt.optimizer.step: seen.append(loss) or _step(
        loss=loss
    )

    _fairseq_update(opt, model, batches)

    # The same update done by hand: the mean loss over every sample of the update and its gradient.
    ref_opt = MomoAdam(reference.parameters(), lr=1e-2, betas=(0.9, 0.98))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    mean_loss = torch.nn.functional.mse_loss(reference(x), y)
    mean_loss.backward()
    ref_opt.step(loss=mean_loss)
    torch.testing.assert_close(seen[0], mean_loss.detach())
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert opt._loss is None  # consumed by the step, not carried into the next update


def test_fairseq_momo_zero_grad_drops_the_pending_loss():
    model = torch.nn.Linear(2, 1)
    opt = _wrapper(model)
    opt.backward(model(torch.ones(3, 2)).sum())  # e.g. fairseq's OOM recovery zeroes the grads
    opt.zero_grad()
    with pytest.raises(RuntimeError, match="fp16"):
        opt.step()


def test_fairseq_momo_state_dict_keeps_the_update_count():
    model = torch.nn.Linear(2, 1)
    opt = _wrapper(model)
    _fairseq_update(opt, model, [(torch.ones(3, 2), torch.zeros(3, 1))])
    restored = _wrapper(torch.nn.Linear(2, 1))
    restored.load_state_dict(opt.state_dict())
    assert restored._num_updates == 1
    saved, loaded = opt.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert loaded.keys() == saved.keys() and len(saved) > 0


# --------------------------------------------------------------------------- real fairseq-train runs


@pytest.fixture(scope="module")
def tiny_data_bin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    iwslt14.write_synthetic_corpus(root / "text", n_train=200, n_eval=20)
    return iwslt14.binarize(root / "text", root / "bin")


def _fairseq_train(data_bin: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "fairseq-train"),
        str(data_bin),
        *("--user-dir", str(iwslt14.PLUGIN_DIR), "--arch", "transformer"),
        *("--encoder-layers", "1", "--decoder-layers", "1"),
        *("--encoder-embed-dim", "32", "--decoder-embed-dim", "32"),
        *("--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64"),
        *("--encoder-attention-heads", "2", "--decoder-attention-heads", "2"),
        *("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"),
        *("--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "3"),
        *(
            "--max-tokens",
            "400",
            "--max-update",
            "6",
            "--log-format",
            "json",
            "--log-interval",
            "1",
        ),
        *(
            "--save-dir",
            str(work / "ck"),
            "--no-save",
            "--cpu",
            "--num-workers",
            "0",
            "--seed",
            "1",
        ),
        *args,
    ]
    env = iwslt14._subprocess_env() | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    ("optimizer", "update_freq"), [("momo_adam", "1"), ("momo_adam_star", "2")]
)
def test_fairseq_train_momo_adam_records_step_sizes(
    tiny_data_bin, tmp_path, optimizer, update_freq
):
    trace_file = tmp_path / "trace.csv"
    result = _fairseq_train(
        tiny_data_bin,
        tmp_path,
        *("--optimizer", optimizer, "--adam-betas", "(0.9, 0.98)", "--weight-decay", "1e-4"),
        *("--update-freq", update_freq, "--momo-trace", str(trace_file)),
    )
    assert result.returncode == 0, result.stderr[-3000:]

    trace = iwslt14.read_step_trace(trace_file)
    assert [r["update"] for r in trace] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in trace)
    assert all(
        r["step_size"] > 0 and r["adaptive_step"] > 0 for r in trace[1:]
    )  # lr is 0 at update 1
    assert all(r["step_size"] <= r["lr"] / (1 - 0.9 ** r["update"]) * (1 + 1e-6) for r in trace)
    # The loss MoMo stepped on is the mean loss fairseq logs for that update (in bits there).
    log = iwslt14.read_fairseq_log(result.stdout + result.stderr)
    logged = {int(r["num_updates"]): r for r in log["train_inner"]}
    for row in trace:
        assert row["loss"] / math.log(2) == pytest.approx(
            logged[int(row["update"])]["loss"], abs=2e-3
        )
        assert "step_size" in logged[int(row["update"])]
    has_lb = all(math.isfinite(r["lb_estimate"]) for r in trace)
    assert has_lb == optimizer.endswith("_star")


# --------------------------------------------------------------------------- the IWSLT14 glue


def test_iwslt14_train_command_follows_the_recipe(tmp_path):
    cfg = _compose("optimizer=adam", "optimizer.lr=5e-4", "fairseq.dropout=0.1")
    command = iwslt14.train_command(cfg, tmp_path / "bin", tmp_path / "work")
    joined = " ".join(command)
    for expected in (
        "--arch transformer_iwslt_de_en --share-decoder-input-output-embed",
        "--optimizer adam --lr 0.0005 --weight-decay 0.0001 --adam-betas (0.9, 0.98)",
        "--lr-scheduler inverse_sqrt --warmup-updates 4000",
        "--criterion label_smoothed_cross_entropy --label-smoothing 0.1",
        "--max-tokens 4096",
        "--dropout 0.1",
        "--clip-norm 0.0",
        "--eval-bleu",
    ):
        assert expected in joined
    assert "--momo-trace" not in command
    momo = iwslt14.train_command(_compose(), tmp_path / "bin", tmp_path / "work")
    assert momo[momo.index("--optimizer") + 1] == "momo_adam_star"
    assert momo[momo.index("--momo-trace") + 1] == str(tmp_path / "work" / "momo_trace.csv")


def test_iwslt14_missing_dataset_names_the_preparation_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"scripts/prepare_iwslt14\.sh") as error:
        iwslt14.check_data(tmp_path / "iwslt14" / "data-bin", tmp_path)
    assert "de-en.tgz" in str(error.value)
    cfg = _compose(f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path}", "device=cpu")
    with pytest.raises(DatasetNotFoundError):
        iwslt14.run(cfg)
    (record,) = (tmp_path / "results" / "runs" / "iwslt14").glob("[0-9a-f]*")
    run_json = json.loads((record / "run.json").read_text())
    assert run_json["status"] == "failed" and "prepare_iwslt14.sh" in run_json["error"]


def test_iwslt14_converter_reads_fairseq_logs():
    text = "\n".join(
        [
            '2024 | INFO | train_inner | {"epoch": 1, "loss": "5.0", "lr": "1e-4", "num_updates": "1"}',
            '2024 | INFO | train_inner | {"epoch": 1, "loss": "4.0", "lr": "2e-4", "num_updates": "2"}',
            '2024 | INFO | valid | {"epoch": 1, "valid_loss": "4.5", "valid_bleu": "3.25"}',
            '2024 | INFO | train | {"epoch": 1, "train_loss": "4.5", "train_lr": "2e-4", '
            '"train_num_updates": "2", "train_gnorm": "1.5", "train_wall": "7"}',
            "Generate test with beam=5: BLEU4 = 34.41, 67.5/46.9/34.4/25.5 (BP=1.000)",
        ]
    )
    log = iwslt14.read_fairseq_log(text)
    steps = [
        {
            "update": 1.0,
            "lr": 1e-4,
            "step_size": 1e-4,
            "adaptive_step": 0.5,
            "lb_estimate": math.nan,
            "loss": 3.0,
        },
        {
            "update": 2.0,
            "lr": 2e-4,
            "step_size": 0.1,
            "adaptive_step": 0.1,
            "lb_estimate": 1.0,
            "loss": 2.5,
        },
    ]
    (row,) = iwslt14.epoch_metrics(log, steps)
    assert row["epoch"] == 0 and row["val/loss"] == 4.5 and row["val/score"] == 3.25
    assert row["optim/cap_fraction"] == 1.0 and row["optim/lb_estimate"] == 1.0
    assert iwslt14.parse_bleu(text) == 34.41
    fallback = iwslt14.trace_rows(log, [], max_rows=10)  # Adam: fairseq's own log lines
    assert [(r["step"], r["lr"], r["epoch"]) for r in fallback] == [(1, 1e-4, 0), (2, 2e-4, 0)]
    assert len(iwslt14.trace_rows(log, steps * 10, max_rows=5)) == 5


def test_iwslt14_plot_draws_schedule_and_adaptive_steps():
    pd = pytest.importorskip("pandas")
    import matplotlib

    matplotlib.use("Agg")
    trace = pd.DataFrame(
        {"step": [1, 2, 3], "lr": [1e-4, 2e-4, 3e-4], "adaptive_step": [1e-2, 1e-3, float("nan")]}
    )
    ax = iwslt14.plot_schedule_and_steps(trace)
    (line,) = ax.get_lines()
    assert line.get_color() == "black" and list(line.get_ydata()) == [1e-4, 2e-4, 3e-4]
    assert len(ax.collections[0].get_offsets()) == 2  # the NaN step has no dot


def _xml(segments: list[str]) -> str:
    body = "\n".join(f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segments, 1))
    return f"<mteval>\n<doc>\n{body}\n</doc>\n</mteval>\n"


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
    for name in iwslt14.TEST_SETS:
        files[f"de-en/{name}.de-en.de.xml"] = _xml(["Hallo Welt", "Wie geht’s"])
        files[f"de-en/{name}.de-en.en.xml"] = _xml(["Hello world", "How are you"])
    archive = tmp_path / "de-en.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    data_bin = iwslt14.prepare(tmp_path / "data", archive=archive, bpe_tokens=50)

    text = tmp_path / "data" / "iwslt14" / "iwslt14.tokenized.de-en"
    plain = {f.name: f.read_text().replace("@@ ", "").splitlines() for f in text.glob("*.??")}
    # 47 pairs (the title, kept without its tags, and 46 sentences); pairs 23 and 46 are validation.
    assert plain["valid.en"] == ["this is sentence number 21 .", "this is sentence number 44 ."]
    assert len(plain["train.de"]) == 45 and plain["train.de"][0] == "ein titel"
    assert plain["test.de"][:2] == ["hallo welt", "wie geht &apos; s"]  # Moses splits it for German
    assert len(plain["test.en"]) == 10
    assert iwslt14.check_data(data_bin) == data_bin


@pytest.mark.slow
def test_iwslt14_smoke_run_writes_a_record(tmp_path):
    cfg = _compose("profile=smoke", f"results_dir={tmp_path}", "fairseq.update_freq=2")
    record = iwslt14.run(cfg)
    run_json = json.loads((record / "run.json").read_text())
    assert run_json["status"] == "completed" and run_json["score_name"] == "bleu"
    assert run_json["data"]["synthetic"] is True and run_json["epochs_done"] == 2
    metrics = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[-1]["val/loss"]) and "test/score" in metrics[-1]
    with (record / "trace.csv").open() as f:
        trace = list(csv.DictReader(f))
    assert len(trace) == 4 and all(float(r["adaptive_step"]) > 0 for r in trace)
    assert iwslt14.run(cfg) == record  # finished: a rerun returns at once
