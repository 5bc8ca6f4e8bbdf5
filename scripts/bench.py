"""Optimizer-step benchmark: MoMo against torch.optim, side by side in one process.

Times `optimizer.step()` alone (gradients preset, no forward/backward) and prints the median over repeats
and the ratio to the matching torch optimizer: Momo vs SGD(momentum=0.9, dampening=0.9, foreach=True),
MomoAdam vs Adam(foreach=True). Two parameter lists: ResNet20's shapes (0.27M parameters, 59 tensors) and
ResNet50's (25.6M, 161 tensors). Eager multi-tensor and compiled (`compiled=True`, the whole update under
torch.compile(fullgraph=True)) paths; the official momo-opt 0.1.0 too where it can be loaded.

    python scripts/bench.py [--device cuda] [--repeats 50] [--sizes resnet20 resnet50] [--no-compiled]

momo-opt installs a package also called `momo`; `make bench` puts it in `.bench_cache/momo_opt` and this
script loads it from there under another name.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from momo import Momo, MomoAdam

OFFICIAL_DIR = Path(__file__).resolve().parents[1] / ".bench_cache" / "momo_opt" / "momo"


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


def make_params(shapes, device: str, seed: int = 0) -> list[torch.Tensor]:
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


def median_step_ms(step: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """(median step time in ms, first-call time in s: the compile latency for compiled steps)."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), first


def bench_size(
    name: str, shapes, device: str, repeats: int, compiled: bool, official
) -> list[dict]:
    loss = torch.tensor(1.0, device=device)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    candidates: list[tuple[str, str, Callable]] = [
        (
            "SGD-M (torch)",
            "sgd",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.9, foreach=True),
        ),
        ("Momo", "sgd", lambda p: Momo(p, lr=0.1)),
        ("Adam (torch)", "adam", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
        ("MomoAdam", "adam", lambda p: MomoAdam(p, lr=1e-3)),
    ]
    if compiled:
        candidates += [
            ("Momo compiled", "sgd", lambda p: Momo(p, lr=0.1, compiled=True)),
            ("MomoAdam compiled", "adam", lambda p: MomoAdam(p, lr=1e-3, compiled=True)),
        ]
    if official is not None:
        candidates += [
            ("momo-opt Momo", "sgd", lambda p: official.Momo(p, lr=0.1)),
            ("momo-opt MomoAdam", "adam", lambda p: official.MomoAdam(p, lr=1e-3)),
        ]
    rows, baseline = [], {}
    for label, family, build in candidates:
        opt = build(make_params(shapes, device))
        is_momo = not label.endswith("(torch)")
        step = functools.partial(opt.step, loss=loss) if is_momo else opt.step
        median, first = median_step_ms(step, repeats, device)
        if not is_momo:
            baseline[family] = median
        rows.append(
            dict(
                size=name,
                n_params=n_params,
                n_tensors=len(shapes),
                optimizer=label,
                ms=median,
                ratio=median / baseline[family],
                first_call_s=first,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--sizes", nargs="+", default=["resnet20", "resnet50"], choices=["resnet20", "resnet50"]
    )
    parser.add_argument(
        "--no-compiled", action="store_true", help="skip the compiled path (compiles take ~1 min)"
    )
    args = parser.parse_args()

    official = load_official()
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"momo-opt {'loaded' if official else 'not installed (make bench installs it)'}"
    )
    shapes = {"resnet20": resnet20_shapes, "resnet50": resnet50_shapes}
    print("| parameters | optimizer | median step (ms) | ratio to torch | first call (s) |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes:
        rows = bench_size(
            size, shapes[size](), args.device, args.repeats, not args.no_compiled, official
        )
        for r in rows:
            print(
                f"| {r['size']} ({r['n_params'] / 1e6:.2f}M, {r['n_tensors']} tensors) | {r['optimizer']} "
                f"| {r['ms']:.2f} | {r['ratio']:.2f}x | {r['first_call_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
