"""`python -m experiments.train` as a person uses it: bad input, a read-only results directory, two copies
of one run at once."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.runner import errors
from experiments.runner.train import cli

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _cli(tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", *overrides,
            f"results_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip


def _run_cli_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, *overrides: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", _cli(tmp_path, *overrides)[2:])
    monkeypatch.setattr(errors, "SHOW_TRACEBACK", False)
    with pytest.raises(SystemExit) as exit_info:
        cli()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["optimizer=sgd_m", "optimizer.lr=-1"],
         "error: Invalid learning rate: -1 (a finite number > 0)"),
        (["optimizer.lr=nan"], "error: Invalid learning rate: nan (a finite number > 0)"),
        (["optimizer.beta=1.5"], "error: Invalid beta: 1.5 (must be in [0, 1))"),
        (["epochs=0"], "error: Invalid epochs: 0 (an integer >= 1)"),
        (["optimizer.weight_decay=inf"], "error: Invalid optimizer.weight_decay: inf (a finite number)"),
        (["optimizer=no_such"],
         "error: Could not find 'optimizer/no_such'; available: adabelief, adabound, adam, adamw, "
         "lion, momo, momo_adam, momo_adam_star, momo_star, prox_sps, sgd_m"),
    ],
)  # fmt: skip
def test_cli_bad_input_prints_one_line_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, overrides: list[str], line: str
) -> None:
    code, err = _run_cli_in_process(
        tmp_path, monkeypatch, capsys, "experiment=mnist_mlp", "profile=smoke", *overrides
    )
    assert code == errors.INPUT_ERROR_EXIT
    assert err.splitlines() == [line, "(HYDRA_FULL_ERROR=1 shows the traceback)"]
    assert not (tmp_path / "r").exists()


def test_cli_missing_dataset_names_the_experiment_in_its_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    code, err = _run_cli_in_process(
        tmp_path, monkeypatch, capsys, "experiment=mnist_mlp", f"data_dir={tmp_path / 'nodata'}"
    )
    assert code == errors.INPUT_ERROR_EXIT
    first, _debug_hint = err.splitlines()
    assert first == (
        f"error: Dataset 'mnist' not found. Looked at: {tmp_path / 'nodata' / 'MNIST' / 'raw'}; "
        "To get it: python -m experiments.train experiment=mnist_mlp task.download=true "
        "(torchvision downloads MNIST)"
    )
    assert not (tmp_path / "r").exists()


def test_cli_with_hydra_full_error_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", _cli(tmp_path, "experiment=mnist_mlp", "epochs=0")[2:])
    monkeypatch.setattr(errors, "SHOW_TRACEBACK", True)
    with pytest.raises(ValueError, match="Invalid epochs: 0"):
        cli()


def test_cli_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        _cli(tmp_path, "experiment=mnist_mlp", "profile=smoke", "optimizer=sgd_m", "optimizer.lr=-1"),
        cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: Invalid learning rate: -1 (a finite number > 0)",
        "(HYDRA_FULL_ERROR=1 shows the traceback)",
    ]
    assert not (tmp_path / "r").exists()


def _as_nobody() -> list[str]:
    """A command prefix that drops root's right to write anywhere (chmod does not stop root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip(
            "running as root without setpriv: cannot make a directory read-only for the run"
        )
    nobody = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """A temporary directory that another user can enter (pytest's are private to their owner)."""
    with tempfile.TemporaryDirectory(prefix="momo-test-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def test_cli_read_only_results_directory_fails_before_training(open_tmp_path: Path) -> None:
    results = open_tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    hydra_dir = open_tmp_path / "hydra"
    hydra_dir.mkdir()
    hydra_dir.chmod(0o777)  # Hydra's own output may be written
    command = [*_as_nobody(), sys.executable, "-m", "experiments.train", "experiment=mnist_mlp",
               "profile=smoke", "checkpoint=false", f"results_dir={results}",
               f"hydra.run.dir={hydra_dir}"]  # fmt: skip
    env = {**ENV, "HOME": str(hydra_dir)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: Results directory {results} is not writable (Permission denied: "
        f"{results / 'runs'}); choose another with results_dir=<path>",
        "(HYDRA_FULL_ERROR=1 shows the traceback)",
    ]
    assert "epoch 1/" not in result.stdout + result.stderr  # nothing trained
    assert not any(results.iterdir())


@pytest.mark.slow
def test_two_identical_runs_started_together_train_once(tmp_path: Path) -> None:
    """The second process waits for the first and returns its completed record; nothing is replaced."""
    command = _cli(tmp_path, "experiment=synthetic_ls", "profile=smoke", "epochs=300")
    started = [
        subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        outputs = [process.communicate(timeout=300)[0] for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert [process.returncode for process in started] == [0, 0], outputs
    (record,) = (tmp_path / "r" / "runs" / "synthetic_ls").glob("*/run.json")
    info = json.loads(record.read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 300
    assert len((record.parent / "metrics.jsonl").read_text().splitlines()) == 300
    trained = [o for o in outputs if "completed after 300 epochs" in o]
    waited = [o for o in outputs if "is being trained by pid" in o]
    assert len(trained) == 1 and len(waited) == 1, outputs
    assert " is completed already: " in waited[0]
    assert "epoch 1/300" not in waited[0]
    assert not (record.parent.parent / ".partial").exists()
