"""Sweep throughput: a learning-rate grid trained batched (experiments/runner/batched.py) vs one run at a time.

Both modes run in this process, on the same synthetic stand-in data, for the same number of steps, with the
same per-step bookkeeping as the runner (loss, gradient norm, the optimizer's step-size diagnostics) and an
evaluation of the training and validation sets at the end of each epoch. Prints runs per hour, the ratio,
and where the time goes (forward+backward, the optimizer steps, evaluation, the rest).

    python scripts/bench_sweep.py                       # MLP grid: one Fashion-MNIST-sized epoch
    python scripts/bench_sweep.py --mlp-steps 100       # MLP grid, 100 steps, then the evaluation
    python scripts/bench_sweep.py --skip-mlp --resnet-steps 3 --resnet-members 8

The MLP grid is the default figure's (configs/sweep/fashion_mnist_mlp.yaml, one seed: 32 runs of
784-100-100-10 at batch 128). The ResNet20 grid takes `--resnet-members` runs spread over the optimizers of
configs/sweep/cifar10_resnet20.yaml, for a few steps without evaluation (a CPU cannot do more).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.data.images import normalize, synthetic_image_dataset  # noqa: E402
from experiments.runner import optim  # noqa: E402
from experiments.runner.batched import BatchedGroup  # noqa: E402

DIAGNOSTICS = ("step_size", "adaptive_step", "lb_estimate")


class Clock:
    """Seconds per named phase; `with clock("eval"): ...` (synchronising a CUDA device around it)."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, phase: str) -> _Phase:
        return _Phase(self, phase)

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self(phase):
                return fn(*args, **kwargs)

        return wrapper


class _Phase:
    def __init__(self, clock: Clock, phase: str) -> None:
        self.clock, self.phase = clock, phase

    def __enter__(self) -> None:
        self.clock.sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.clock.sync()
        self.clock.seconds[self.phase] += time.perf_counter() - self.start


def grid_configs(experiment: str, seed: int, limit: int | None = None) -> list[DictConfig]:
    """The resolved run configs of one seed of `configs/sweep/<experiment>.yaml`; with `limit`,
    that many spread round-robin over the optimizers."""
    spec = OmegaConf.load(ROOT / "configs" / "sweep" / f"{experiment}.yaml")
    blocks = [
        [(name, lr) for lr in block["optimizer.lr"]] for name, block in spec.optimizers.items()
    ]
    runs = [run for block in blocks for run in block]
    if limit is not None:
        spread = [block[len(block) // 2 :] + block[: len(block) // 2] for block in blocks]
        runs = [run for column in zip(*spread) for run in column][:limit]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return [
            compose(
                "train",
                overrides=[
                    f"experiment={experiment}",
                    f"optimizer={name}",
                    f"optimizer.lr={lr}",
                    f"seed={seed}",
                ],
            )
            for name, lr in runs
        ]


def build_task(cfg: DictConfig, n_train: int, n_val: int, steps: int | None, device: torch.device):
    task = hydra.utils.instantiate(
        cfg.task,
        synthetic=True,
        synthetic_n_train=n_train,
        synthetic_n_val=n_val,
        max_train_batches=steps,
    )
    task.setup(device)
    return task


@functools.cache
def _synthetic(dataset: str, n_train: int, n_val: int, device: torch.device):
    return synthetic_image_dataset(dataset, n_train, n_val, device=device)


def eval_batches(
    task, n_train: int, n_val: int, split: str, device: torch.device
) -> Iterator[tuple]:
    """The batches `task.evaluate` iterates (the same synthetic data), for the batched evaluation.
    A stand-in for the per-batch evaluation the task contract will need."""
    data = _synthetic(task.dataset, n_train, n_val, device)
    images, labels = (
        (data.train_images, data.train_labels)
        if split == "train"
        else (data.val_images, data.val_labels)
    )
    mean, std = torch.tensor(task.mean, device=device), torch.tensor(task.std, device=device)
    for start in range(0, labels.shape[0], task.eval_batch_size):
        stop = start + task.eval_batch_size
        yield normalize(images[start:stop], mean, std), labels[start:stop]


def eval_sums(model, batch) -> dict[str, torch.Tensor]:
    """Per-batch sums of the classification evaluation: summed loss, number correct, count."""
    images, labels = batch
    logits = model(images).float()
    return {
        "loss": F.cross_entropy(logits, labels, reduction="sum"),
        "correct": (logits.argmax(dim=1) == labels).sum(),
        "count": torch.tensor(labels.shape[0], device=labels.device),
    }


class StepRecord:
    """The runner's per-step bookkeeping: values stay tensors until the end of the epoch."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, key: str, value: torch.Tensor) -> None:
        self.values[key].append(value)

    def finish(self) -> dict[str, list]:
        return {k: torch.stack(v).tolist() for k, v in self.values.items()}


def train_sequential(
    cfgs: list[DictConfig], task, epochs: int, evaluate: bool, clock: Clock
) -> list[dict]:
    """Each run on its own, as experiments.train does (without the record files)."""
    finals = []
    for cfg in cfgs:
        net = task.build_model()
        optimizer = optim.build_optimizer(cfg.optimizer, net.parameters())
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        timed_closure = clock.timed(
            "forward+backward", functools.partial(_closure, task, net, optimizer)
        )
        row: dict = {}
        for _ in range(epochs):
            net.train()
            record = StepRecord()
            for batch in task.train_batches(generator):
                with clock("optimizer steps"):
                    loss = optimizer.step(functools.partial(timed_closure, batch))
                with clock("bookkeeping"):
                    grads = [p.grad for p in net.parameters() if p.grad is not None]
                    record.add("loss", loss.detach())
                    record.add("grad_norm", torch.nn.utils.get_total_norm(grads))
                    group = optimizer.param_groups[0]
                    for key in DIAGNOSTICS:
                        if key in group:
                            record.add(key, group[key].detach().clone())
            with clock("bookkeeping"):
                row = {"steps": record.finish()}
            if evaluate:
                with clock("evaluation"):
                    for split in ("train", "val"):
                        row |= {f"{split}/{k}": v for k, v in task.evaluate(net, split).items()}
        finals.append(row)
    # the closure's time is inside the optimizer's: keep the step's own share
    clock.seconds["optimizer steps"] -= clock.seconds["forward+backward"]
    return finals


def _closure(task, net, optimizer, batch: Any) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = task.loss(net, batch)
    loss.backward()
    return loss


def train_batched(
    cfgs: list[DictConfig],
    task,
    epochs: int,
    evaluate: bool,
    clock: Clock,
    sizes: tuple[int, int],
    width: int | None,
) -> list[dict]:
    """All runs as one BatchedGroup."""
    factories = [functools.partial(optim.build_optimizer, cfg.optimizer) for cfg in cfgs]
    group = BatchedGroup(task.build_model(), factories, task.loss, width=width)
    for member in group.members:
        member.optimizer.step = clock.timed("optimizer steps", member.optimizer.step)
    torch.manual_seed(cfgs[0].seed)
    generator = torch.Generator().manual_seed(cfgs[0].seed)
    rows: list[dict] = [{} for _ in cfgs]
    for _ in range(epochs):
        group.train()
        record = StepRecord()
        for batch in task.train_batches(generator):
            with clock("forward+backward"):
                result = group.step(batch)
            with clock("bookkeeping"):
                record.add("loss", result.loss)
                record.add("grad_norm", result.grad_norm)
                groups = [m.optimizer.param_groups[0] for m in group.members]
                for key in DIAGNOSTICS:
                    values = [g[key] for g in groups if key in g]
                    if values:
                        record.add(key, torch.stack(values))
        with clock("bookkeeping"):
            steps = record.finish()
        if evaluate:
            with clock("evaluation"):
                for split in ("train", "val"):
                    batches = eval_batches(task, *sizes, split, clock.device)
                    sums = group.evaluate(batches, eval_sums)
                    for row, s in zip(rows, sums):
                        if s is not None:
                            row[f"{split}/loss"] = s["loss"] / s["count"]
                            row[f"{split}/score"] = s["correct"] / s["count"]
        for row in rows:
            row["steps"] = steps
    clock.seconds["forward+backward"] -= clock.seconds["optimizer steps"]
    return rows


def compare(
    name: str,
    cfgs,
    task,
    epochs: int,
    evaluate: bool,
    repeats: int,
    sizes,
    width: int | None,
    device: torch.device,
) -> None:
    k = len(cfgs)
    steps = task.batches_per_epoch() * epochs
    print(
        f"\n## {name}: {k} runs, {steps} steps of batch {task.batch_size} each"
        + (", train+val evaluation per epoch" if evaluate else ", no evaluation")
    )
    times: dict[str, list[float]] = defaultdict(list)
    clocks: dict[str, list[Clock]] = defaultdict(list)
    finals = {}
    for repeat in range(repeats):
        # alternate the order so that a change of load on the machine hits both modes alike
        order = ("batched", "sequential") if repeat % 2 == 0 else ("sequential", "batched")
        for mode in order:
            clock = Clock(device)
            clock.sync()
            start = time.perf_counter()
            if mode == "batched":
                finals[mode] = train_batched(cfgs, task, epochs, evaluate, clock, sizes, width)
            else:
                finals[mode] = train_sequential(cfgs, task, epochs, evaluate, clock)
            clock.sync()
            elapsed = time.perf_counter() - start
            clock.seconds["other"] = elapsed - sum(clock.seconds.values())
            times[mode].append(elapsed)
            clocks[mode].append(clock)
            print(f"  {mode:10s} repeat {repeat + 1}: {elapsed:7.1f} s", flush=True)
    print("\n| mode | wall time (s, median) | runs per hour | ratio |")
    print("|---|---:|---:|---:|")
    seq = statistics.median(times["sequential"])
    for mode in ("sequential", "batched"):
        t = statistics.median(times[mode])
        print(f"| {mode} | {t:.1f} | {k / t * 3600:,.0f} | {seq / t:.2f}x |")
    phases = ["forward+backward", "optimizer steps", "evaluation", "bookkeeping", "other"]
    print("\n| mode | " + " | ".join(f"{p} (s)" for p in phases) + " |")
    print("|---|" + "---:|" * len(phases))
    for mode in ("sequential", "batched"):
        shares = [statistics.median(c.seconds.get(p, 0.0) for c in clocks[mode]) for p in phases]
        print(f"| {mode} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")
    if evaluate:
        agree, differ = 0, []
        for cfg, b, q in zip(cfgs, finals["batched"], finals["sequential"]):
            x, y = b.get("val/loss", float("nan")), q["val/loss"]
            if abs(x - y) <= 1e-3 * abs(y) + 1e-6 or x == y:
                agree += 1
            else:
                differ.append(f"{cfg.optimizer.name} lr {cfg.optimizer.lr:g}: {x:.4g} vs {y:.4g}")
        print(
            f"\nfinal val/loss of batched and sequential runs agree to 1e-3 (+1e-6) for {agree} of {k}"
        )
        for line in differ:
            print(f"  differs: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=None, help="BatchedGroup chunk width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per mode")
    parser.add_argument("--mlp-epochs", type=int, default=1)
    parser.add_argument("--mlp-steps", type=int, default=None, help="steps per epoch (cap)")
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--resnet-steps", type=int, default=3, help="0 skips the ResNet20 grid")
    parser.add_argument("--resnet-members", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"width {args.width or 'all'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {' '.join(_load())}"
    )
    if not args.skip_mlp:
        cfgs = grid_configs("fashion_mnist_mlp", args.seed)
        sizes = (60_000, 10_000)
        task = build_task(cfgs[0], *sizes, args.mlp_steps, device)
        _synthetic(task.dataset, *sizes, device)  # generated once, outside the timed evaluation
        compare(
            "MLP grid", cfgs, task, args.mlp_epochs, True, args.repeats, sizes, args.width, device
        )
    if args.resnet_steps:
        cfgs = grid_configs("cifar10_resnet20", args.seed, limit=args.resnet_members)
        task = build_task(cfgs[0], 128 * args.resnet_steps, 128, args.resnet_steps, device)
        compare("ResNet20 grid", cfgs, task, 1, False, args.repeats, (0, 0), args.width, device)
    print(f"\nload average at the end: {' '.join(_load())}")


def _load() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


if __name__ == "__main__":
    main()
