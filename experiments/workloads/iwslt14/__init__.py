"""IWSLT14 De-En with fairseq (docs/design.md §5).

fairseq owns the training loop of this workload (its transformer, token-based batching, inverse-sqrt
schedule, checkpoints and BLEU); this package connects it to the suite, one module per job:

- `data`: fairseq's corpus preparation (`python -m experiments.workloads.iwslt14.data`, or
  scripts/prepare_iwslt14.sh) and the synthetic stand-in of the smoke profile;
- `commands`: the `fairseq-train` and `fairseq-generate` command lines of a run config, and running them;
- `convert`: fairseq's logs and the plugin's step trace -> the suite's record rows;
- `runner`: one run, `runner.check(cfg)` then `runner.run(cfg)`, which `experiments.train` calls for `experiment=iwslt14`;
- `fairseq_plugin`: the MoMo optimizers as fairseq optimizers (`fairseq-train --user-dir`).

Run it like any experiment: `python -m experiments.train experiment=iwslt14 optimizer=momo_adam_star ...`.
"""
