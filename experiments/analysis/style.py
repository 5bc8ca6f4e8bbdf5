"""How the figures look: the paper's method colours and names, line styles for variants, one rc style."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# The paper's method colours (docs/experiments.md, Figures), by optimizer config name.
COLOURS = {
    "momo": "#023047",
    "momo_adam": "#3F88C5",
    "sgd_m": "#de9151",
    "adam": "#f34213",
    "adamw": "#f34213",
    "momo_star": "#87b37a",
    "momo_adam_star": "#648381",
    "prox_sps": "#97BF88",
    "adabelief": "#FFBF46",
    "adabound": "#4f9d69",
    "lion": "#dbabab",
}
LABELS = {
    "momo": "MoMo",
    "momo_adam": "MoMo-Adam",
    "sgd_m": "SGD-M",
    "adam": "Adam",
    "adamw": "AdamW",
    "momo_star": "MoMo*",
    "momo_adam_star": "MoMo-Adam*",
    "prox_sps": "Prox-SPS",
    "adabelief": "AdaBelief",
    "adabound": "AdaBound",
    "lion": "Lion",
}
# A line variant's values, in the order of the spec: line style and marker (ours filled, the paper's open).
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
BAND_ALPHA = 0.15
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "savefig.bbox": "tight",
    "savefig.dpi": 200,
}


def colour(method: str) -> str:
    return COLOURS.get(str(method).replace("-", "_"), "#555555")


def label(method: str) -> str:
    """'momo_adam' -> 'MoMo-Adam'; an unknown name stays as it is."""
    return LABELS.get(str(method).replace("-", "_"), str(method))


def order(methods, preferred: list[str]) -> list[str]:
    """`methods` in the order of `preferred` (a spec's methods), the others after them by name."""
    rank = {m: i for i, m in enumerate(preferred)}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m))


def save(fig: plt.Figure, path: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Writes `fig` as path.<format> for each format and closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(f".{fmt}") for fmt in formats]
    for file in out:
        fig.savefig(file)
    plt.close(fig)
    return out
