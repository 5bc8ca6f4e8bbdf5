"""The docs say what the code is: the state keys of docs/algorithm.md, the maps of the tree in
docs/design.md and README.md, and no citation of a file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from experiments.layout import REPO_ROOT
from momo import Momo, MomoAdam

# Files of the optimizer work that still cite the specification; they are to point at docs/ too.
MODULE_PACKAGES = (
    "runner",
    "tasks",
    "data",
    "workloads/iwslt14",
    "analysis",
)  # the map names their modules


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO_ROOT / name for name in listed]


def _code_block_after(path: Path, heading: str) -> list[str]:
    text = path.read_text()
    after = text[text.index(heading) :]
    return after.split("```")[1].splitlines()[1:]


def _experiments_packages() -> list[str]:
    root = REPO_ROOT / "experiments"
    return sorted(
        str(p.parent.relative_to(root)) for p in root.rglob("__init__.py") if p.parent != root
    )


def test_docs_no_repository_file_cites_a_file_outside_the_repository() -> None:
    outside = re.compile(r"SPEC\.md|SPEC fact|\.\./shared|/work/shared")
    texts = (".py", ".md", ".yaml", ".sh", ".toml", "")
    citing = {
        str(path.relative_to(REPO_ROOT))
        for path in _tracked_files()
        if path.suffix in texts
        and path.is_file()
        and path != Path(__file__).resolve()  # the pattern above
        and outside.search(path.read_text(errors="replace"))
    }
    assert not citing, sorted(citing)


def test_docs_design_map_names_every_package_and_module() -> None:
    block = "\n".join(_code_block_after(REPO_ROOT / "docs" / "design.md", "## 0. Map"))
    for package in _experiments_packages():
        assert f"{package.split('/')[-1]}/" in block, package
    for package in MODULE_PACKAGES:
        for module in (REPO_ROOT / "experiments" / package).glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in block, f"experiments/{package}/{module.name}"
    for module in (REPO_ROOT / "experiments").glob("*.py"):
        if module.name != "__init__.py":
            assert module.name in block, module.name


def test_docs_readme_layout_matches_the_tree() -> None:
    lines = _code_block_after(REPO_ROOT / "README.md", "## Layout")
    named, parent = [], ""
    for line in lines:
        name = line.split()[0]
        if line.startswith("  "):
            named.append(f"{parent}{name}")
        else:
            parent = name if name.endswith("/") else ""
            named.append(name)
    for name in named:
        assert (REPO_ROOT / name).exists(), name
    for package in _experiments_packages():
        top = package.split("/")[0]
        assert any(n.startswith(f"experiments/{top}/") for n in named), package


def test_docs_algorithm_state_keys_are_the_optimizers() -> None:
    text = (REPO_ROOT / "docs" / "algorithm.md").read_text()
    table = text[text.index("## Where each symbol lives") :].split("\n## ")[0]
    keys = {
        "momo": re.findall(r'`state\["momo"\]\["([^"]+)"\]`', table),
        "param": re.findall(r'`state\[p\]\["([^"]+)"\]`', table),
        "group": re.findall(r'`group\["([^"]+)"\]`', table),
    }
    assert all(keys.values()), keys
    seen = {"momo": set(), "param": set(), "group": set()}
    for cls in (Momo, MomoAdam):
        x = torch.tensor([1.0, -2.0], requires_grad=True)
        opt = cls([x], lr=0.1, use_fstar=True)
        for _ in range(2):
            opt.zero_grad()
            loss = (x**2).sum()
            loss.backward()
            opt.step(loss=loss)
        seen["momo"] |= {k.replace(".0", ".<i>") for k in opt.state["momo"]}
        seen["param"] |= set(opt.state[x])
        seen["group"] |= set(opt.param_groups[0])
    for kind, documented in keys.items():
        assert set(documented) <= seen[kind], (kind, set(documented) - seen[kind])
