"""`make report`: one self-contained HTML page per experiment, read back as a browser would."""

import base64
import html
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from experiments.analysis import report


class _Page(HTMLParser):
    """The tables (rows of cell texts), image sources and links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def page(aggregated_once, tmp_path_factory):
    plots = tmp_path_factory.mktemp("plots")
    path = report.write_report("fashion_mnist_mlp", aggregated_once, plots)
    parsed = _Page()
    parsed.feed(path.read_text())
    return path, parsed


def test_report_embeds_every_figure_as_png_data(page):
    _, parsed = page
    assert len(parsed.images) >= 5  # robustness, its extras, two training curves, step sizes
    for src in parsed.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_tables_hold_the_widths_the_best_scores_and_every_run(page, aggregated_once):
    _, parsed = page
    widths, best, runs = parsed.tables
    assert widths[0] == ["figure", "method", "variant", "best final score (lr)", "1 pt", "5 pt",
                         "lr range"]  # fmt: skip
    assert widths[1][:2] == ["fashion_mnist_mlp", "MoMo"]
    summary = pd.read_csv(aggregated_once / "fashion_mnist_mlp_summary.csv")
    momo = summary[(summary["figure"] == "fashion_mnist_mlp") & (summary["method"] == "momo")]
    top = momo.loc[momo["score_mean"].idxmax()]
    assert ["fashion_mnist_mlp", "MoMo", "", f"{top['lr']:g}"] in [row[:4] for row in best]
    statuses = [row[4] for row in runs[1:]]
    assert sorted(statuses) == ["completed"] * 8 + ["missing"]
    left_out = [row for row in runs[1:] if row[5] == "no" and row[4] == "completed"]
    assert len(left_out) == 1 and left_out[0][6].startswith("with epochs=10")


def test_report_links_each_record_directory(page, aggregated_once):
    path, parsed = page
    runs = pd.read_csv(aggregated_once / "fashion_mnist_mlp_runs.csv").dropna(subset=["path"])
    assert len(parsed.links) == len(runs) == 8
    for link in parsed.links:
        target = (path.parent / html.unescape(link)).resolve()
        assert (target / "run.json").is_file()
    assert {re.sub(r"/$", "", link).split("/")[-1] for link in parsed.links} == set(runs["run_id"])


def test_report_without_aggregate_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main(["fashion_mnist_mlp", "--results-dir", str(tmp_path)])
    assert exit_.value.code == 1
    assert "make aggregate EXPERIMENT=fashion_mnist_mlp" in capsys.readouterr().err
