"""Optimizer-step benchmark: MoMo against torch.optim, side by side in one process.

Times `optimizer.step()` alone (gradients preset, no forward/backward): Momo against
SGD(momentum=0.9, dampening=0.9, foreach=True), MomoAdam against Adam(foreach=True), each eager
(foreach) and compiled (`compiled=True`), and the paper's momo-opt 0.1.0 where it can be loaded. Two
parameter lists: ResNet20's shapes (0.27M parameters, 59 tensors) and ResNet50's (25.6M, 161 tensors).

The candidates of one list run interleaved, one step each per round in a rotating order, so that a change
of machine load hits them all alike; a ratio is the median over rounds of (step time / the torch
optimizer's step time in the same round). On CUDA each step is timed with CUDA events. The first call of
a compiled step is its cold compile: the inductor cache starts empty (a fresh directory) unless
--warm-cache.

    python scripts/bench.py [--device cuda] [--repeats 30] [--sizes resnet20 resnet50] [--threads N]
                            [--clock wall|cpu] [--no-compiled] [--warm-cache]

momo-opt installs a package also called `momo`; `make bench` puts it in `.bench_cache/momo_opt` and this
script loads it from there under another name.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = ROOT / ".bench_cache" / "momo_opt" / "momo"


def resnet20_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of the CIFAR ResNet20 (option-A shortcuts, no shortcut parameters)."""
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3), (16,), (16,)]
    in_ch = 16
    for ch in (16, 32, 64):
        for _ in range(3):
            shapes += [(ch, in_ch, 3, 3), (ch,), (ch,), (ch, ch, 3, 3), (ch,), (ch,)]
            in_ch = ch
    return [*shapes, (10, 64), (10,)]


def resnet50_shapes() -> list[tuple[int, ...]]:
    from torchvision.models import resnet50

    return [tuple(p.shape) for p in resnet50().parameters()]


SIZES = {"resnet20": resnet20_shapes, "resnet50": resnet50_shapes}


def make_params(shapes, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=g).to(device).requires_grad_(True)
        p.grad = torch.randn(shape, generator=g).to(device) * 1e-2
        params.append(p)
    return params


def load_official():
    """momo-opt's Momo and MomoAdam, or None where it is not in .bench_cache."""
    if not (OFFICIAL_DIR / "__init__.py").exists():
        return None
    spec = importlib.util.spec_from_file_location(
        "momo_official",
        OFFICIAL_DIR / "__init__.py",
        submodule_search_locations=[str(OFFICIAL_DIR)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["momo_official"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Candidate:
    label: str
    family: str  # "sgd" or "adam": the torch optimizer it is compared with
    build: Callable
    takes_loss: bool = True
    step: Callable | None = None
    first_call_s: float = 0.0
    times_ms: list[float] = field(default_factory=list)


def candidates(compiled: bool, official) -> list[Candidate]:
    import torch

    from momo import Momo, MomoAdam

    rows = [
        Candidate(
            "SGD-M (torch)",
            "sgd",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.9, foreach=True),
            takes_loss=False,
        ),
        Candidate("Momo", "sgd", lambda p: Momo(p, lr=0.1)),
        Candidate(
            "Adam (torch)", "adam", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), False
        ),
        Candidate("MomoAdam", "adam", lambda p: MomoAdam(p, lr=1e-3)),
    ]
    if compiled:
        rows += [
            Candidate("Momo compiled", "sgd", lambda p: Momo(p, lr=0.1, compiled=True)),
            Candidate("MomoAdam compiled", "adam", lambda p: MomoAdam(p, lr=1e-3, compiled=True)),
        ]
    if official is not None:
        rows += [
            Candidate("momo-opt Momo", "sgd", lambda p: official.Momo(p, lr=0.1)),
            Candidate("momo-opt MomoAdam", "adam", lambda p: official.MomoAdam(p, lr=1e-3)),
        ]
    return rows


def bench_size(
    shapes, device: str, repeats: int, rows: list[Candidate], clock: Callable[[], float]
) -> list[Candidate]:
    import torch

    cuda = device.startswith("cuda")
    loss = torch.tensor(1.0, device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for row in rows:
        opt = row.build(make_params(shapes, device))
        row.step = (lambda o=opt: o.step(loss=loss)) if row.takes_loss else opt.step
        sync()
        start = time.perf_counter()
        row.step()  # state creation; the cold compile of a compiled step
        sync()
        row.first_call_s = time.perf_counter() - start
        for _ in range(3):
            row.step()
    sync()
    for r in range(repeats):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        if cuda:
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in order
            ]
            for row, (begin, end) in zip(order, events):
                begin.record()
                row.step()
                end.record()
            torch.cuda.synchronize()
            for row, (begin, end) in zip(order, events):
                row.times_ms.append(begin.elapsed_time(end))
        else:
            for row in order:
                start = clock()
                row.step()
                row.times_ms.append((clock() - start) * 1e3)
    return rows


def ratios(rows: list[Candidate]) -> dict[str, float]:
    """Per candidate: the median over rounds of its time over its torch baseline's time in that round."""
    baseline = {row.family: row for row in rows if not row.takes_loss}
    return {
        row.label: statistics.median(
            t / b for t, b in zip(row.times_ms, baseline[row.family].times_ms)
        )
        for row in rows
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="CPU steps: wall time, or with --threads 1 the thread's CPU time, which other processes on "
        "a shared machine do not inflate",
    )
    parser.add_argument(
        "--no-compiled",
        action="store_true",
        help="skip the compiled steps (cold compiles take minutes)",
    )
    parser.add_argument(
        "--warm-cache", action="store_true", help="keep inductor's on-disk cache (no cold compile)"
    )
    args = parser.parse_args()
    cold_cache = None if args.warm_cache else tempfile.TemporaryDirectory(prefix="momo-bench-")
    if cold_cache is not None:  # before torch is imported: inductor reads it when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_cache.name

    import torch

    sys.path.insert(0, str(ROOT))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.clock == "cpu" and device.startswith("cuda"):
        parser.error("--clock cpu is for CPU steps; CUDA steps are timed with CUDA events")
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu needs --threads 1 (other threads' work would not be counted)")
    official = load_official()
    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(
        f"torch {torch.__version__}, {hardware}, {torch.get_num_threads()} threads, median of "
        f"{args.repeats} interleaved rounds ({'events' if device.startswith('cuda') else args.clock} "
        f"clock), momo-opt "
        f"{'loaded' if official else 'not installed (make bench installs it)'}, inductor cache "
        f"{'warm' if args.warm_cache else 'cold'}"
    )
    print("| parameters | optimizer | median step (ms) | ratio to torch | first call (s) |")
    print("|---|---|---:|---:|---:|")
    summary = {}
    for size in args.sizes:
        shapes = SIZES[size]()
        name = f"{size} ({sum(torch.Size(s).numel() for s in shapes) / 1e6:.2f}M, {len(shapes)} tensors)"
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        rows = bench_size(
            shapes, device, args.repeats, candidates(not args.no_compiled, official), clock
        )
        ratio = ratios(rows)
        for row in rows:
            print(
                f"| {name} | {row.label} | {statistics.median(row.times_ms):.2f} | "
                f"{ratio[row.label]:.2f}x | {row.first_call_s:.1f} |",
                flush=True,
            )
        summary[name] = (rows, ratio)

    labels = ["Momo", "MomoAdam", "Momo compiled", "MomoAdam compiled"]
    labels += ["momo-opt Momo", "momo-opt MomoAdam"] if official else []
    print("\nratio to torch's foreach SGD-M (Momo) or Adam (MomoAdam), median step in brackets:\n")
    print("| parameter list | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, (rows, ratio) in summary.items():
        by_label = {row.label: row for row in rows}
        cells = [
            f"{ratio[label]:.2f}x ({statistics.median(by_label[label].times_ms):.2f} ms)"
            for label in labels
            if label in by_label
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if cold_cache is not None:
        cold_cache.cleanup()


if __name__ == "__main__":
    main()
