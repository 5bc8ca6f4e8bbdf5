"""The runner: one training run from a config (`train`), the epoch loop (`loop`), run records (`records`),
data-parallel training (`distributed`), loggers (`loggers`), optimizers and schedules (`optim`), and
sweeps of runs (`sweep`). It knows nothing of specific tasks or optimizers."""
