"""Where the suite's files live: the run layout and the aggregate file names (docs/design.md §4).

Paths only: this module names files and lists directories; it never reads or writes a file. The record
writer (experiments.runner.records), the workload runners, the sweep status, the aggregation and the
plots all take their file names from here, so the layout changes in one place.

    <results_dir>/runs/<experiment>/<run_id>/               config.yaml, metrics.jsonl, trace.csv, run.json
    <results_dir>/runs/<experiment>/.tmp/<run_id>-<pid>/    a record assembled here, then renamed into place
    <results_dir>/runs/<experiment>/.partial/<run_id>/      per-epoch checkpoint of an unfinished run
    <results_dir>/runs/<experiment>/.partial/<group_id>/    a batched group's members.yaml and checkpoint
    <results_dir>/runs/<experiment>/.locks/<run_id>.lock    the lock of the process that trains the run
                                                            (or the group: <group_id>.lock)
    <results_dir>/work/<experiment>/<run_id>/               a workload's own files (fairseq's checkpoints)
    <results_dir>/<experiment>.csv, .parquet, _summary.csv, _curves.csv, _robustness.csv, _runs.csv,
                              _trace.parquet  (experiments.analysis.aggregate)
    <results_dir>/paper/<experiment>.csv                    the paper's own records
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"  # Hydra's config tree

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TRACE = "trace.csv"
RUN_INFO = "run.json"
RECORD_FILES = (CONFIG, METRICS, TRACE, RUN_INFO)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class RunPaths:
    """Where the record, its staging directory, its checkpoint and its work files of one run live."""

    results_dir: Path
    experiment: str
    run_id: str

    @property
    def experiment_dir(self) -> Path:
        return runs_dir(self.results_dir, self.experiment)

    @property
    def record(self) -> Path:
        return self.experiment_dir / self.run_id

    def staging(self, pid: int) -> Path:
        """Where process `pid` assembles the record before renaming it to `record`."""
        return self.experiment_dir / ".tmp" / f"{self.run_id}-{pid}"

    @property
    def partial(self) -> Path:
        return self.experiment_dir / ".partial" / self.run_id

    @property
    def checkpoint(self) -> Path:
        return self.partial / CHECKPOINT

    @property
    def lock(self) -> Path:
        """Locked (flock) by the one process that trains this run; kept, empty of meaning, after it."""
        return self.experiment_dir / ".locks" / f"{self.run_id}.lock"

    @property
    def work(self) -> Path:
        """Scratch space of a workload with its own trainer (kept for its resume, not a record)."""
        return Path(self.results_dir) / "work" / self.experiment / self.run_id

    @property
    def config(self) -> Path:
        return self.record / CONFIG

    @property
    def metrics(self) -> Path:
        return self.record / METRICS

    @property
    def trace(self) -> Path:
        return self.record / TRACE

    @property
    def info(self) -> Path:
        return self.record / RUN_INFO


def runs_dir(results_dir: str | Path, experiment: str) -> Path:
    return Path(results_dir) / "runs" / experiment


def record_dirs(results_dir: str | Path, experiment: str) -> Iterator[Path]:
    """The record directories of an experiment, sorted (staging and partial ones start with a dot)."""
    root = runs_dir(results_dir, experiment)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if not path.name.startswith(".") and (path / RUN_INFO).is_file():
            yield path


@dataclass(frozen=True)
class AggregatePaths:
    """The tables that experiments.analysis.aggregate writes for one experiment, and the paper's record."""

    results_dir: Path
    experiment: str

    def _named(self, suffix: str) -> Path:
        return Path(self.results_dir) / f"{self.experiment}{suffix}"

    @property
    def table(self) -> Path:
        """One row per run and epoch, as CSV ..."""
        return self._named(".csv")

    @property
    def parquet(self) -> Path:
        """... and as parquet (what the plots read)."""
        return self._named(".parquet")

    @property
    def summary(self) -> Path:
        """The summary format's final epoch (experiments.analysis.summary): what figures are drawn from."""
        return self._named("_summary.csv")

    @property
    def curves(self) -> Path:
        """The summary format, every epoch: the training curves."""
        return self._named("_curves.csv")

    @property
    def runs(self) -> Path:
        """Every record of the experiment and every expected run: selected, left out (why), missing."""
        return self._named("_runs.csv")

    @property
    def trace(self) -> Path:
        return self._named("_trace.parquet")

    @property
    def robustness(self) -> Path:
        """The lr-band widths (experiments.analysis.robustness)."""
        return self._named("_robustness.csv")

    @property
    def paper(self) -> Path:
        return Path(self.results_dir) / "paper" / f"{self.experiment}.csv"


def aggregated_experiments(results_dir: str | Path) -> list[str]:
    """The experiments that have an aggregated summary in `results_dir`, sorted."""
    summaries = Path(results_dir).glob("*_summary.csv")
    return sorted(p.name.removesuffix("_summary.csv") for p in summaries)
