"""The fairseq MoMo plugin: loss bookkeeping against a hand-made update, and real fairseq-train runs on a
generated corpus."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments.workloads.iwslt14 import commands, convert, data
from momo import MomoAdam

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fairseq") is None, reason="needs fairseq: scripts/install_fairseq.sh"
)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
    data.write_synthetic_corpus(root / "text", n_train=200, n_eval=20)
    return data.binarize(root / "text", root / "bin")


def _fairseq_train(data_bin: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "fairseq-train"),
        str(data_bin),
        *("--user-dir", str(commands.PLUGIN_DIR), "--arch", "transformer"),
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
    env = commands.subprocess_env() | {"OMP_NUM_THREADS": "1"}
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

    trace = convert.read_step_trace(trace_file)
    assert [r["step"] for r in trace] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in trace)
    assert all(
        r["step_size"] > 0 and r["adaptive_step"] > 0 for r in trace[1:]
    )  # lr is 0 at update 1
    assert all(r["step_size"] <= r["lr"] / (1 - 0.9 ** r["step"]) * (1 + 1e-6) for r in trace)
    # The loss MoMo stepped on is the mean loss fairseq logs for that update (in bits there).
    log = convert.read_fairseq_log(result.stdout + result.stderr)
    logged = {int(r["num_updates"]): r for r in log["train_inner"]}
    for row in trace:
        assert row["loss"] / math.log(2) == pytest.approx(
            logged[int(row["step"])]["loss"], abs=2e-3
        )
        assert "step_size" in logged[int(row["step"])]
    has_lb = all(math.isfinite(r["lb_estimate"]) for r in trace)
    assert has_lb == optimizer.endswith("_star")
