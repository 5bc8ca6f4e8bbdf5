"""Fig. 1 of the paper (analytic, no training): the truncated MoMo model on two 1-D losses."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.analysis import style


def plot_fig1(path: Path, alpha: float = 5.0, beta: float = 0.9) -> list[Path]:
    """Fig. 1: the truncated model max{averaged linearisation, f_*} on two 1-D losses (no training).

    The past iterates come from a few SGD-M steps with a small lr; from the last one, SGD-M with lr
    alpha follows the averaged gradient all the way, MoMo stops where the model reaches f_* = 0.
    """
    losses = {
        "$f(x) = x^2/2$": (lambda x: 0.5 * x**2, lambda x: x, 0.04),
        r"$f(x) = \log\cosh(x)$": (lambda x: np.log(np.cosh(x)), lambda x: np.tanh(x), 0.1),
    }
    with plt.rc_context(style.STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6), layout="constrained")
        for ax, (title, (f, g, warmup_lr)) in zip(axes, losses.items(), strict=True):
            x, fbar, d, gamma, path_x = 3.0, None, None, None, []
            for _ in range(10):  # SGD-M warm-up with a small lr: the memory of the averages
                fx, gx = f(x), g(x)
                if fbar is None:
                    fbar, d, gamma = fx, gx, gx * x
                else:
                    fbar = beta * fbar + (1 - beta) * fx
                    d = beta * d + (1 - beta) * gx
                    gamma = beta * gamma + (1 - beta) * gx * x
                path_x.append(x)
                x = x - warmup_lr * d
            x = path_x[-1]
            t1 = max(fbar + d * x - gamma, 0.0) / d**2
            x_momo, x_sgdm = x - min(alpha, t1) * d, x - alpha * d
            grid = np.linspace(min(x_sgdm, -1.0) - 0.5, 3.5, 400)
            ax.plot(grid, f(grid), color="black", lw=1.2, label="loss $f$")
            ax.plot(
                grid,
                np.maximum(fbar + d * grid - gamma, 0.0),  # the model, truncated at f_* = 0
                color="#3F88C5",
                lw=1.4,
                label="MoMo model (truncated at $f_*$)",
            )
            ax.scatter(
                path_x, f(np.array(path_x)), s=10, color="#9a9a9a", zorder=3, label="past iterates"
            )
            ax.scatter([x], [f(x)], s=22, color="black", zorder=4, label="$x_k$")
            for x_next, c, name in ((x_momo, "#023047", "MoMo"), (x_sgdm, "#de9151", "SGD-M")):
                ax.axvline(x_next, color=c, ls="--", lw=0.9)
                ax.scatter(
                    [x_next],
                    [f(x_next)],
                    s=40,
                    marker="*",
                    color=c,
                    zorder=4,
                    label=f"{name} $x_{{k+1}}$",
                )
            ax.set(title=title, xlabel="x", ylim=(-0.3, 1.3 * f(3.5)))
        axes[0].legend(frameon=False, loc="upper center")
        fig.suptitle(rf"One step from $x_k$ with learning rate $\alpha$ = {alpha:g}", fontsize=8.5)
        return style.save(fig, path)
