"""Train one run: `python -m experiments.train experiment=<id> optimizer=<name> optimizer.lr=<lr> seed=<s>`.

The suite's one Hydra entry point, for every experiment (a workload with its own trainer, IWSLT14,
included) and for multiruns (`-m`). The runner itself is experiments/runner/train.py.
"""

from experiments.runner.train import cli

if __name__ == "__main__":
    cli()
