"""MoMo: momentum-model adaptive learning rates (Schaipp, Ohana, Eickenberg, Defazio, Gower; ICML 2024).

``Momo`` is MoMo on SGD with momentum, ``MomoAdam`` MoMo on Adam; ``use_fstar=True`` on either is MoMo*,
which estimates the loss's lower bound online. Both need the batch loss: ``optimizer.step(loss=loss)`` after
``loss.backward()``, or ``optimizer.step(closure)``.
"""

from momo.momo import Momo
from momo.momo_adam import MomoAdam

# The functional steps stay in their modules (momo.momo.momo, momo.momo_adam.momo_adam), so that
# `momo.momo` remains the module.
__all__ = ["Momo", "MomoAdam"]
__version__ = "0.1.0"
