"""Figure specs: one per sweep, covering what the sweep runs; bad specs fail with one clear line."""

import pytest

from experiments.analysis.spec import FIGURE_DIR, load_spec, value_text
from experiments.layout import CONFIG_DIR
from experiments.runner.sweep import load_sweep

SWEEPS = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))


def test_every_sweep_has_a_figure_spec():
    assert sorted(p.stem for p in FIGURE_DIR.glob("*.yaml")) == SWEEPS


@pytest.mark.parametrize("experiment", SWEEPS)
def test_figure_spec_covers_what_its_sweep_runs(experiment):
    spec = load_spec(experiment)
    blocks = load_sweep(experiment)
    shown = set(spec.methods) | set(spec.extras.methods if spec.extras else [])
    assert {b.optimizer for b in blocks} <= shown
    declared = {v.key for v in spec.variants} | set(spec.coupled)
    for block in blocks:
        # Every setting swept besides the lr and the seed is a variant or coupled to the lr.
        varied = {k for k, values in block.params.items() if len(values) > 1}
        assert varied - {"seed", "optimizer.lr"} <= declared, (block.optimizer, varied)
    coupled = [b for b in blocks if b.optimizer == blocks[0].optimizer]
    if len(coupled) > 1:  # a list of (lr, value) pairs: the values must be declared
        keys = {k for b in coupled for k in b.params} - {"seed", "optimizer.lr"}
        assert keys <= declared


def test_figure_specs_of_the_issue():
    vit = load_spec("imagenet_vit")
    assert vit.coupled == ["optimizer.weight_decay"] and vit.variants == []
    imagenet32 = load_spec("imagenet32_resnet18")
    assert [(v.key, v.role) for v in imagenet32.variants] == [
        ("optimizer.weight_decay", "panel"),
        ("optimizer.lb", "line"),
    ]
    iwslt = load_spec("iwslt14")
    assert iwslt.score.key == "val/token_acc" and iwslt.variant("line").key == "fairseq.dropout"
    for experiment in ("synthetic_ls", "diffusion"):
        score = load_spec(experiment).score
        assert (score.higher_is_better, score.log, score.tolerance) == (False, True, "relative")
    assert load_spec("fashion_mnist_mlp").extras.methods == ["momo_star", "momo"]
    assert "prox_sps" not in load_spec("cifar10_resnet20").methods


def test_load_spec_errors_name_the_file_and_the_value(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no figure spec .*nothing\.yaml"):
        load_spec("nothing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: e\ntitle: t\nmethods: [momo]\nscore: {tolerance: absolute}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: score\.tolerance 'absolute' is not one of"):
        load_spec(bad)
    bad.write_text("experiment: e\ntitle: t\nmethods: [momo]\nband: two\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: band: Value 'two'"):
        load_spec(bad)


def test_value_text_compares_numbers_by_value():
    assert value_text(0) == value_text(0.0) == value_text("0.0") == "0"
    assert value_text(1e-4) == value_text("0.0001") == "0.0001"
    assert value_text(None) == value_text("none") == value_text(float("nan")) == ""
