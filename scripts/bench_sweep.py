"""Sweep throughput: a learning-rate grid trained as one batched group vs one run at a time.

Both modes run in this process through the runner itself, records included: sequential is
`experiments.runner.train.train` per run (what each job of a sequential sweep does), batched is
`experiments.runner.group.train_group` over the whole grid (what one job of a batched sweep does). The
modes alternate over the repeats so that a change of load hits both alike; the load average is printed
with the times (the machine may be shared). Prints wall times, runs per hour and the ratio, and checks
that the two modes' final validation scores agree.

    python scripts/bench_sweep.py                         # MLP grid (1 epoch) + ResNet20 grid (3 steps)
    python scripts/bench_sweep.py --mlp-steps 100 --skip-resnet
    python scripts/bench_sweep.py --device cuda --resnet-steps 300 --resnet-members 32 --skip-mlp

The MLP grid is the default figure's (configs/sweep/fashion_mnist_mlp.yaml, one seed: 32 runs of
784-100-100-10 at batch 128) on real Fashion-MNIST when it is installed, else on the synthetic stand-in
of the same size. The ResNet20 grid takes `--resnet-members` runs spread over the optimizers of
configs/sweep/cifar10_resnet20.yaml, on synthetic CIFAR-sized data at batch 128, for a few steps.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.layout import CONFIG_DIR  # noqa: E402
from experiments.runner import group, train  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def grid(experiment: str, overrides: list[str], limit: int | None = None) -> list[list[str]]:
    """The override lists of one seed of `configs/sweep/<experiment>.yaml`; with `limit`, that many
    runs dealt round-robin over the optimizers, each from the middle of its lr grid outwards."""
    spec = OmegaConf.load(CONFIG_DIR / "sweep" / f"{experiment}.yaml")
    blocks = [[(name, lr) for lr in b["optimizer.lr"]] for name, b in spec.optimizers.items()]
    if limit is None:
        runs = [run for block in blocks for run in block]
    else:
        spread = [block[len(block) // 2 :] + block[: len(block) // 2] for block in blocks]
        runs = [run for column in zip(*spread) for run in column][:limit]
    return [
        [f"experiment={experiment}", f"optimizer={name}", f"optimizer.lr={lr}", *overrides]
        for name, lr in runs
    ]


def configs(runs: list[list[str]], results_dir: Path) -> list[DictConfig]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return [compose("train", overrides=[*r, f"results_dir={results_dir}"]) for r in runs]


def compare(name: str, runs: list[list[str]], repeats: int) -> None:
    print(f"\n## {name}: {len(runs)} runs ({' '.join(runs[0][3:])})", flush=True)
    # untimed: the imports and first-use costs that either mode would pay first in this process
    warm = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    try:
        (cfg,) = configs([[*runs[0], "epochs=1", "profile.max_train_batches=1"]], warm)
        train.train(cfg)
        group.train_group(configs(runs[:2], warm), group.write_group(configs(runs[:2], warm)))
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    times: dict[str, list[float]] = defaultdict(list)
    finals: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        order = ("batched", "sequential") if repeat % 2 == 0 else ("sequential", "batched")
        for mode in order:
            results = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
            try:
                cfgs = configs(runs, results)
                load = _load()
                start = time.perf_counter()
                if mode == "batched":
                    infos = group.train_group(cfgs, group.write_group(cfgs))
                else:
                    infos = [train.train(cfg) for cfg in cfgs]
                elapsed = time.perf_counter() - start
            finally:
                shutil.rmtree(results, ignore_errors=True)
            times[mode].append(elapsed)
            finals[mode] = infos
            print(f"  {mode:10s} repeat {repeat + 1}: {elapsed:7.1f} s (load {load})", flush=True)
    print("\n| mode | wall time (s, median) | runs per hour | ratio |")
    print("|---|---:|---:|---:|")
    sequential = statistics.median(times["sequential"])
    for mode in ("sequential", "batched"):
        t = statistics.median(times[mode])
        print(f"| {mode} | {t:.1f} | {len(runs) / t * 3600:,.0f} | {sequential / t:.2f}x |")
    print("\nfinal val/score, batched vs sequential, where they differ by more than 0.005:")
    for b, s in zip(finals["batched"], finals["sequential"], strict=True):
        x, y = b["final"].get("val/score"), s["final"].get("val/score")
        if (x is None) != (y is None) or (x is not None and abs(x - y) > 0.005):
            print(f"  {b['optimizer']} lr={b['lr']:g}: {x} ({b['status']}) vs {y} ({s['status']})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per mode")
    parser.add_argument("--mlp-epochs", type=int, default=1)
    parser.add_argument("--mlp-steps", type=int, default=None, help="cap on steps per epoch")
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--resnet-steps", type=int, default=3)
    parser.add_argument("--resnet-members", type=int, default=8)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = f"device={args.device}"
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {_load()}"
    )
    if not args.skip_mlp:
        real = FASHION_MNIST.is_file()
        overrides = [
            "seed=0",
            f"epochs={args.mlp_epochs}",
            device,
            *([] if real else ["profile.synthetic=true", "+task.synthetic_n_train=60000"]),
            *([f"profile.max_train_batches={args.mlp_steps}"] if args.mlp_steps else []),
        ]
        data = "real Fashion-MNIST" if real else "synthetic Fashion-MNIST-sized data"
        compare(f"MLP grid, {data}", grid("fashion_mnist_mlp", overrides), args.repeats)
    if not args.skip_resnet:
        overrides = [
            "seed=0",
            "epochs=1",
            device,
            "profile=smoke",
            "task.batch_size=128",
            f"+task.synthetic_n_train={128 * args.resnet_steps}",
            f"profile.max_train_batches={args.resnet_steps}",
            "profile.max_eval_batches=1",
            "task.eval_batch_size=128",
        ]
        runs = grid("cifar10_resnet20", overrides, limit=args.resnet_members)
        compare("ResNet20 grid, synthetic CIFAR-sized data", runs, args.repeats)
    print(f"\nload average at the end: {_load()}")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
