"""MoMo optimizers for fairseq: ``fairseq-train --user-dir experiments/workloads/iwslt14/fairseq_plugin``.

Registers four fairseq optimizers that wrap the ``momo`` package:

- ``momo``: ``momo.Momo``; options ``--momo-beta --momo-lb --momo-bias-correction --weight-decay``
- ``momo_star``: ``Momo(use_fstar=True)``, same options (``--momo-lb`` is MoMo*'s floor)
- ``momo_adam``: ``momo.MomoAdam``; ``--adam-betas --adam-eps --momo-lb --momo-decoupled-decay
  --weight-decay``
- ``momo_adam_star``: ``MomoAdam(use_fstar=True)``, same options

``--adam-betas``/``--adam-eps`` keep fairseq's Adam spelling, so an Adam and a MoMo-Adam command line
differ only in ``--optimizer``. ``--momo-trace FILE`` writes one CSV row per update in the columns of the
suite's trace.csv (``step, epoch, loss, lr, step_size, adaptive_step, lb_estimate``; the epoch is left
empty for the record converter to fill in); the step sizes are also logged to fairseq's metrics
(``step_size``, ``adaptive_step``, ``lb_estimate``), so they appear in ``train_inner`` / ``train`` logs.

Where the loss comes from
-------------------------
MoMo needs the loss of the batch whose gradient it steps along, and fairseq's trainer never passes it to
``step()``. One update of ``fairseq.trainer.Trainer.train_step`` is::

    optimizer.zero_grad()
    for sample in samples:                      # --update-freq micro-batches (delayed updates)
        loss, sample_size_i, _ = task.train_step(sample, ...)   # calls optimizer.backward(loss)
        sample_size += sample_size_i
    optimizer.all_reduce_grads(model)           # DDP: gradients AVERAGED over the W workers
    optimizer.multiply_grads(W / sample_size)   # sample_size: all-reduced SUM over workers
    optimizer.clip_grad_norm(clip_norm)
    optimizer.step()                            # task.optimizer_step; no loss

Criteria return a loss SUMMED over the batch (e.g. tokens), and ``sample_size`` is the matching count,
so after ``multiply_grads`` the gradient is that of ``sum of all workers' losses / total sample_size``:
the mean loss per token of the whole update. The wrapper mirrors this on the loss: ``backward`` keeps
the detached loss and sums it over the ``--update-freq`` micro-batches, ``multiply_grads(c)`` multiplies
it by the same ``c``, ``zero_grad`` (also fairseq's OOM recovery) drops it, and ``step`` hands it to
MoMo. On one worker that is exactly the mean loss of the gradient. On W workers each rank holds
``local sum * W / total``; MoMo's ``sync_loss`` averages it over ranks, giving ``global sum / total``,
again the loss of the (averaged) gradient, so every rank takes the same step. Dummy batches (loss
multiplied by 0 by fairseq) add nothing. The loss is in the criterion's unit (nats for
``label_smoothed_cross_entropy``); fairseq's logs print base-2 values, which MoMo does not care about
(its step is invariant to scaling the loss and its lower bound together).

Not supported
-------------
- ``--fp16``, ``--bf16``, ``--memory-efficient-fp16/bf16`` and ``--amp``: fairseq's mixed-precision
  wrappers (``FP16Optimizer``, ``MemoryEfficientFP16Optimizer``, ``AMPOptimizer``) call
  ``loss.backward()`` and rescale gradients themselves, so the loss never reaches this wrapper and the
  first ``step`` raises a ``RuntimeError`` saying so. Train in fp32 (TF32 matmuls on Ampere or newer).
- ``--clip-norm > 0`` rescales the gradient but not the loss, so MoMo's model no longer matches the
  gradient when clipping is active. The IWSLT14 recipe uses ``--clip-norm 0``.
"""

from .optimizers import (
    FairseqMomo,
    FairseqMomoAdam,
    FairseqMomoAdamConfig,
    FairseqMomoConfig,
    StepTrace,
    register,
)

register()

__all__ = [
    "FairseqMomo",
    "FairseqMomoAdam",
    "FairseqMomoAdamConfig",
    "FairseqMomoConfig",
    "StepTrace",
    "register",
]
