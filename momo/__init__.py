"""MoMo: momentum-model adaptive learning rates (Schaipp, Ohana, Eickenberg, Defazio, Gower; ICML 2024).

``Momo`` is MoMo on SGD with momentum, ``MomoAdam`` MoMo on Adam; ``use_fstar=True`` on either is MoMo*,
which estimates the loss's lower bound online. Both need the batch loss: ``optimizer.step(loss=loss)`` after
``loss.backward()``, or ``optimizer.step(closure)``.
"""

from momo.momo import Momo, momo
from momo.momo_adam import MomoAdam, momo_adam

__all__ = ["Momo", "MomoAdam", "momo", "momo_adam"]
__version__ = "0.1.0"
