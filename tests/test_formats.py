"""`fedbridge show --format`: summary.json's rows as JSON and CSV, the before/after table as Markdown
and HTML with the terminal's own cells; on a hand-made summary whose cells can be checked by hand,
and through the command on a real tiny run."""

import csv
import io
import json

import pytest

from conftest import CONFIGS, invoke as run
from fedbridge.report import formats
from fedbridge.report.html import html_table
from fedbridge.report.table import main_cells


def row(client: int, profile: str, method: str, test_set: str, mean: float, std: float) -> dict:
    return {"client": client, "profile": profile, "method": method, "test_set": test_set,
            "accuracy_mean": mean, "accuracy_std": std, "n_seeds": 2}


NOISY = "gaussian(sigma=0.5)"
SUMMARY = {
    "name": "seed", "dataset": "digits", "data_source": "scikit-learn", "seeds": [0, 1], "rounds": 2,
    "methods": ["local", "fedavg"], "strategy": "fedavg",
    "table": [
        row(1, "clean", "local", "own", 0.950, 0.010), row(1, "clean", "fedavg", "own", 0.957, 0.005),
        row(1, "clean", "local", "clean", 0.940, 0.020), row(1, "clean", "fedavg", "clean", 0.960, 0.0),
        row(2, NOISY, "local", "own", 0.800, 0.030), row(2, NOISY, "fedavg", "own", 0.820, 0.010),
        row(2, NOISY, "local", "clean", 0.850, 0.010), row(2, NOISY, "fedavg", "clean", 0.960, 0.0),
    ],
}
MARKDOWN = """\
| client | data | alone, own test | FedAvg, own test | gain | alone, clean test | FedAvg, clean test |
|---:|---|---:|---:|---:|---:|---:|
| 1 | clean | 95.0 ± 1.0 | 95.7 ± 0.5 | +0.7 | 94.0 ± 2.0 | 96.0 ± 0.0 |
| 2 | gaussian(sigma=0.5) | 80.0 ± 3.0 | 82.0 ± 1.0 | +2.0 | 85.0 ± 1.0 | 96.0 ± 0.0 |
"""
TYPES = {"client": int, "accuracy_mean": float, "accuracy_std": float, "n_seeds": int}


def parse_csv(text: str) -> list[dict]:
    return [{k: TYPES.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]


def test_json_is_the_summary_rows():
    assert json.loads(formats.as_json(SUMMARY)) == SUMMARY["table"]


def test_csv_has_the_schema_header_and_parses_back_to_the_same_rows():
    text = formats.as_csv(SUMMARY)
    assert text.splitlines()[0] == "client,profile,method,test_set,accuracy_mean,accuracy_std,n_seeds"
    assert parse_csv(text) == SUMMARY["table"]


def test_markdown_is_the_terminal_table_cell_for_cell():
    assert formats.as_markdown(SUMMARY) == MARKDOWN


def test_markdown_and_html_escape_what_would_break_them():
    cells = main_cells({**SUMMARY, "name": "<b>&", "table": [{**r, "profile": "a|<i>"} for r in SUMMARY["table"]]})
    assert "| a\\|<i> |" in formats.markdown_table(cells)
    page = html_table(cells)
    assert "<caption>&lt;b&gt;&amp;: what joining the federation changed" in page and "<i>" not in page
    assert '<td>a|&lt;i&gt;</td>' in page and '<td class="num">+0.7</td>' in page
    assert '<th class="num">FedAvg, own test</th>' in page and page.count("<tr>") == 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("formats") / "run"
    result = run("run", CONFIGS / "seed.toml", "--set", "data.name=digits", "--set", "partition.sizes=[300,300]",
                 "--set", "train.rounds=2", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_show_prints_each_format_of_a_real_run(tiny_run):
    rows = json.loads((tiny_run / "summary.json").read_text())["table"]
    table = run("show", tiny_run)
    assert table.exit_code == 0 and "alone, own test" in table.output and "┃" in table.output
    assert run("show", tiny_run, "--format", "table").output == table.output
    shown = run("show", tiny_run, "--format", "json")
    assert shown.exit_code == 0 and json.loads(shown.output) == rows
    shown = run("show", tiny_run, "--format", "csv")
    assert shown.exit_code == 0 and parse_csv(shown.output) == rows
    shown = run("show", tiny_run, "--format", "markdown")
    lines = shown.output.splitlines()
    assert shown.exit_code == 0 and lines[0].startswith("| client | data | alone, own test |") and len(lines) == 2 + 2
    assert [line.split(" | ")[1] for line in lines[2:]] == ["clean", "gaussian(sigma=0.2)"]


def test_show_refuses_an_unknown_format(tiny_run):
    result = run("show", tiny_run, "--format", "xml")
    assert result.exit_code == 2 and "'xml' is not one of 'table', 'json', 'csv', 'markdown'" in result.output
