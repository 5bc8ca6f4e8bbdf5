"""A paper figure as config: `configs/figure/<experiment>.yaml` says what the figure of one experiment shows.

The spec is the single place that knows, for one experiment, which methods the paper's figure draws
(extras go to a second figure), how the swept settings other than the lr map onto the figure (a panel
per weight decay, a line style per lower bound, or a value coupled to the lr that is no setting at all),
which recorded metric is the score and in which direction it is better, the unit its tolerances are
measured in, the axes' limits, the band and the paper's record. docs/design.md §6 describes the schema;
an example:

    experiment: imagenet32_resnet18
    title: ResNet18 / Imagenet32
    methods: [momo, momo_adam, momo_star, momo_adam_star, sgd_m, adamw]
    compare: [[momo, sgd_m], [momo_adam, adamw]]
    score: {key: val/score, label: validation accuracy (%), higher_is_better: true, scale: 100,
            tolerance: points, tolerances: [1, 5], unit: pt, ylim: [0, 100]}
    variants:
      - {key: optimizer.weight_decay, paper: weight_decay, role: panel, label: λ, values: [0, 1.0e-4]}
      - {key: optimizer.lb, paper: lb, role: line, label: lb, values: [0, 0.9]}
    paper: {record: imagenet32_resnet18, seeds: 1}

Every value of a variant is compared as text (`value_text`): 0, 0.0 and "0.0" are one value, and a
missing value (a method without a lower bound, the records' "none") is "".
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.layout import CONFIG_DIR

FIGURE_DIR = CONFIG_DIR / "figure"
ROLES = ("panel", "line")
TOLERANCES = ("points", "relative")


@dataclass
class Score:
    """The y axis of the score panel and the unit of the robustness tolerances."""

    key: str = "val/score"  # a recorded metric (metrics.jsonl); the paper's column is key with '_'
    label: str = "validation accuracy (%)"
    higher_is_better: bool = True
    scale: float = 100.0  # plotted = recorded × scale (an accuracy in [0, 1] plotted in %)
    log: bool = False  # a log axis (a loss-like score: MSE)
    ylim: list[float] | None = None  # in plotted units
    tolerance: str = (
        "points"  # points: within t plotted units of the best; relative: within t·|best|
    )
    tolerances: list[float] = field(default_factory=lambda: [1.0, 5.0])
    unit: str = "pt"  # how a points tolerance reads in tables: pt (accuracy points), BLEU, ...


@dataclass
class Loss:
    key: str = "train/loss"
    label: str = "training loss"
    ylim: list[float] | None = None


@dataclass
class Variant:
    """A swept setting other than the lr that the figure shows: a panel or a line style per value."""

    key: str  # the run config's dotted key, e.g. optimizer.weight_decay
    role: str  # panel | line
    label: str  # how its values are named: "λ", "lb", "dropout"
    values: list[Any]  # panel order / line styles (solid, dashed, dotted); the first is the paper's
    paper: str | None = None  # the paper record's column, e.g. weight_decay


@dataclass
class Paper:
    """The paper's record of this figure: results/paper/<record>.csv (seed means per lr and epoch)."""

    record: str
    seeds: int = 3  # over how many seeds the record's means and stds are
    keep: dict[str, str] = field(
        default_factory=dict
    )  # column -> value, e.g. lr_schedule: constant
    overlay: bool = True  # draw the record on the figure of our own runs


@dataclass
class Extras:
    """A second figure of the same experiment for methods the paper's figure does not show."""

    methods: list[str]
    title: str = "beyond the paper's figure"


@dataclass
class FigureSpec:
    experiment: str
    title: str
    methods: list[str]  # the paper's, in legend order
    score: Score = field(default_factory=Score)
    loss: Loss = field(default_factory=Loss)
    compare: list[list[str]] = field(default_factory=list)  # widths on each group's common lr range
    variants: list[Variant] = field(default_factory=list)
    coupled: list[str] = field(default_factory=list)  # keys set from the lr: never a setting
    band: float = 1.0  # the band is mean ± band · std
    curves: int = 3  # training curves: the best settings per method and panel
    paper: Paper | None = None
    extras: Extras | None = None

    def figures(self) -> dict[str, list[str]]:
        """Figure id -> its methods: the paper's figure, then the extras figure if there is one."""
        out = {self.experiment: list(self.methods)}
        if self.extras is not None:
            out[f"{self.experiment}_extras"] = list(self.extras.methods)
        return out

    def variant(self, role: str) -> Variant | None:
        return next((v for v in self.variants if v.role == role), None)

    def group_of(self, method: str, shown: list[str]) -> list[str]:
        """The methods that `method` is compared with in a figure showing `shown`: the first compare
        group with `method` and another shown method (widths on their common lr range)."""
        for group in self.compare:
            members = [m for m in group if m in shown]
            if method in members and len(members) > 1:
                return members
        return [method]

    def score_text(self, mean: float, std: float = math.nan) -> str:
        """A recorded score as shown: in plotted units, "97.97 ± 0.08" (3 significant digits for a
        log-scale score such as an MSE: "1.2e-08 ± 3e-09"), without the ± for one seed."""
        mean, std = mean * self.score.scale, std * self.score.scale
        if self.score.log:
            return f"{mean:.2g}" + (f" ± {std:.1g}" if math.isfinite(std) else "")
        return f"{mean:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")


def value_text(value: Any) -> str:
    """A variant value as text: numbers by value (0, 0.0 and "0.0" are "0"), missing ones "" ."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null", "nan")):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "" if math.isnan(number) else f"{number:g}"


def _check(spec: FigureSpec, source: str) -> None:
    def fail(message: str) -> None:
        raise ValueError(f"{source}: {message}")

    if not spec.methods:
        fail("methods is empty")
    if spec.score.tolerance not in TOLERANCES:
        fail(f"score.tolerance {spec.score.tolerance!r} is not one of {', '.join(TOLERANCES)}")
    for variant in spec.variants:
        if variant.role not in ROLES:
            fail(f"variant {variant.key}: role {variant.role!r} is not one of {', '.join(ROLES)}")
        if not variant.values:
            fail(f"variant {variant.key}: values is empty")
    for role in ROLES:
        if sum(v.role == role for v in spec.variants) > 1:
            fail(f"more than one variant with role {role}")
    shown = set(spec.methods) | set(spec.extras.methods if spec.extras else [])
    for group in spec.compare:
        if not set(group) <= shown:
            fail(f"compare group {group} names methods the figures do not show")
    if spec.band <= 0 or spec.curves < 1:
        fail("band must be > 0 and curves >= 1")


def load_spec(experiment_or_path: str | Path) -> FigureSpec:
    """The figure spec of an experiment (configs/figure/<id>.yaml) or of a spec file."""
    path = Path(experiment_or_path)
    if path.suffix != ".yaml":
        path = FIGURE_DIR / f"{experiment_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FIGURE_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no figure spec {path} (figure specs: {known})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FigureSpec), OmegaConf.load(path))
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0]
        raise ValueError(f"{path}: {key}: {message}" if key else f"{path}: {message}") from error
    _check(spec, str(path))
    return spec
