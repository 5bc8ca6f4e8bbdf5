"""Tasks: data + model + loss + metric of each experiment (docs/design.md §2).

The task classes live in the modules of this package (`classification`, `least_squares`, `diffusion`,
`imagenet_vit`, `criteo_dlrm`); configs name them by their full path. This package exports the contract.
"""

from experiments.tasks.base import PAPER_MODEL_SEED, Task

__all__ = ["PAPER_MODEL_SEED", "Task"]
