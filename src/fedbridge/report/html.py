"""`fedbridge report`: one self-contained HTML file for a run or a sweep. Every figure is a PNG
embedded as base64 and the style is inline, so the file opens anywhere without a network.

The tables are HTML tables of the terminal's own cells (report/table.py, report/grid.py), so a
number in the report is the string `fedbridge show` prints.
"""

import base64
import html
from pathlib import Path

import torch

from fedbridge import __version__, files, results
from fedbridge.errors import DataError, FedbridgeError
from fedbridge.experiment import ClientGroup, Experiment
from fedbridge.federation import build_federation, resolve_dataset
from fedbridge.generic import stacked_forward
from fedbridge.models import build_model
from fedbridge.report import advice, plots
from fedbridge.report.grid import grid_cells, grid_rows
from fedbridge.report.table import Cells, notes, tables, test_title
from fedbridge.schema import LOCAL
from fedbridge.strategies.api import ServerState

SAMPLES_PER_CLIENT = 8
REPORT = "report.html"
# every page carries it in its first bytes: an existing file is replaced only if it has it
GENERATOR = b'<meta name="generator" content="fedbridge'
# the page is as wide as the figures are drawn (plots.WIDTH_PX), so a plot fills it at its own scale
STYLE = """
body { font-family: system-ui, sans-serif; max-width: %dpx; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; line-height: 1.25; }
img { width: 100%%; height: auto; } p.note { color: #8a5a00; } .caption { color: #555; font-size: .9em; }
div.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .85em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .4em; }
caption span { display: block; font-weight: normal; color: #555; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; }
th { background: #f2f2f2; } tbody tr:nth-child(even) { background: #fafafa; }
.num { text-align: right; }
""" % plots.WIDTH_PX


def image(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


NUMBER = ' class="num"'  # a column of numbers: right-aligned, so the digits line up


def number(text: str) -> str:
    """A number's cell, escaped, that a narrow page breaks only before its interval: '+0.8 ± 5.9' stays
    whole, '[−52.1, +53.7]' goes to the next line whole (a sweep's table is wider than the page)."""
    return html.escape(text).replace(" ", "&nbsp;").replace("&nbsp;[", " [")


def html_table(cells: Cells) -> str:
    """One table as HTML, every string escaped: its title (and caption) above, numbers right-aligned."""
    def row(tag: str, values: list[str]) -> str:
        # a header wraps between its words, so that a table of many methods fits the page
        text = lambda v, right: number(v) if right and tag == "td" else html.escape(v)  # noqa: E731
        return "<tr>" + "".join(f"<{tag}{NUMBER if right else ''}>{text(v, right)}</{tag}>"
                                for v, (_, right) in zip(values, cells.columns)) + "</tr>"

    detail = f"<span>{html.escape(cells.caption)}</span>" if cells.caption else ""
    body = "\n".join(row("td", r) for r in cells.rows)
    return (f'<div class="table"><table><caption>{html.escape(cells.title)}{detail}</caption>\n'
            f"<thead>{row('th', [header for header, _ in cells.columns])}</thead>\n<tbody>\n{body}\n</tbody></table></div>")


def run_tables(summary: dict) -> str:
    """The run's tables, then its notes and warnings, as `fedbridge show` prints them."""
    lines = [html_table(cells) for cells in tables(summary)]
    lines += [f'<p class="note">{kind}: {html.escape(text)}</p>' for kind, text in notes(summary)]
    return "\n".join(lines)


def section(title: str, body: str, caption: str = "") -> str:
    note = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return f"<h2>{html.escape(title)}</h2>\n{body}\n{note}"


def page(title: str, sections: list[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR.decode()} {__version__}">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def predictions(exp: Experiment, params: dict, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    model = build_model(exp.model, tuple(images.shape[1:]), num_classes).eval()  # BatchNorm by running statistics, no Dropout
    return torch.cat([stacked_forward(model, params, x.unsqueeze(0))[0].argmax(-1) for x in images.split(2000)])


def confusion(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(true * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def data_sections(run: Path, exp: Experiment, summary: dict, data_dir: Path | None, damaged: set) -> list[str]:
    """Sample images per client and the weakest client's confusion matrices: these need the data
    itself, rebuilt exactly as the run's first seed saw it, and the weights (not `damaged` ones)."""
    try:
        dataset, exp, _ = resolve_dataset(exp, data_dir)
    except DataError as e:
        return [section("Sample images and confusion matrices", f'<p class="note">Not drawn: {html.escape(str(e))}</p>')]
    seed = summary["seeds"][0]
    federation = build_federation(dataset, exp, seed)
    # the same partition with every profile clean: the rows match, only the corruption differs
    original = build_federation(dataset, exp.model_copy(update={"clients": [ClientGroup(count=g.count) for g in exp.clients]}), seed)
    rows = []
    for c, o in zip(federation.clients, original.clients):
        picked = c.train_rows[:SAMPLES_PER_CLIENT]
        rows.append((f"client {c.name or c.index + 1}:\n{c.profile}", original.train_images[picked],
                     original.train_labels[picked], federation.train_images[picked], federation.train_labels[picked]))
    out = [] if dataset.tabular else [section(  # a table's rows are no pictures
        "What each client's data looks like", image(plots.samples(rows), "sample images per client"),
        f"The first {SAMPLES_PER_CLIENT} training images of each client (seed {seed}): the original above, what the "
        "client trains on below, with its label (red where the profile changed the label).",
    )]
    own = {r["client"]: r["accuracy_mean"] for r in summary["table"] if r["test_set"] == "own" and r["method"] == LOCAL}
    strategy = summary["strategy"]
    if not own or {(seed, LOCAL), (seed, strategy)} & damaged:  # those are named at the top of the report
        return out
    before, after = results.load_weights(run, seed, LOCAL), results.load_weights(run, seed, strategy)
    weakest = min(own, key=own.get)
    client = federation.clients[weakest - 1]

    def matrix(title: str, params: dict) -> tuple[str, torch.Tensor]:
        predicted = predictions(exp, ServerState(params).model_for(client.index), client.test_images, federation.num_classes)
        correct = 100 * (predicted == client.test_labels).float().mean().item()
        return f"{title}: {correct:.1f}% correct", confusion(client.test_labels, predicted, federation.num_classes)

    matrices = [matrix("alone (before)", before), matrix(f"{strategy} (after)", after)]
    out.append(section(
        f"The weakest client (client {weakest}, {client.profile}) before and after",
        image(plots.confusions(matrices, federation.class_names), "confusion matrices of the weakest client"),
        f"Its own test data, seed {seed}; the weakest is the client with the lowest accuracy alone.",
    ))
    return out


def damaged_section(run: Path, damaged: dict[tuple[int, str], str]) -> str:
    """The weights files that are not what their method finished with, first: the report still draws
    everything else, which comes from metrics.jsonl."""
    lines = "".join(f'<p class="note">{html.escape(f"{results.weights_path(run, *pair)} {problem}")}</p>'
                    for pair, problem in damaged.items())
    return section("Damaged weights", lines, f"The table and curves come from metrics.jsonl and stand; the "
                   f"confusion matrices need the first seed's weights. To have them again, {results.retrain_fix(run)}.")


def run_page(run: Path, summary: dict, data_dir: Path | None) -> str:
    metrics = results.read_metrics(run)
    exp = results.load_run_experiment(run)
    strategy, seeds = summary["strategy"], summary["seeds"]
    final = [r for r in metrics if r["round"] == summary["rounds"]]
    profiles = {r["client"]: r["profile"] for r in [*final, *summary["table"]]}
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    damaged = {(s, m): problem for s in seeds for m in summary["methods"] if (problem := results.weights_problem(run, s, m))}
    sections = [damaged_section(run, damaged)] if damaged else []
    sections += [
        section("What joining the federation changed", run_tables(summary),
                "gain = own-test accuracy with the federation − alone, in percentage points."),
        section("Accuracy per round", image(plots.curves(metrics, strategy, profiles, test_title(summary)),
                                            "accuracy per round per client"),
                f"{strategy} on each client's own and on the {test_title(summary)} test set ({spread}, band ± std); dotted: "
                "the same client trained alone, after the last round."),
    ]
    if LOCAL in summary["methods"]:
        gains = results.paired_gains(final, strategy)
        sections.append(section("Gain per client", image(plots.gain_bars(gains, profiles, strategy), "gain per client")))
    sections += data_sections(run, exp, summary, data_dir, set(damaged))
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    sections += [
        section("Configuration", f"<pre>{html.escape((run / results.CONFIG).read_text())}</pre>", f"Versions: {versions}."),
    ]
    return page(f"{summary['name']}: {summary['dataset']}, {len(profiles)} clients, {summary['rounds']} rounds", sections)


def sweep_page(out: Path, summary: dict) -> str:
    keys, lines = grid_rows(summary)
    sections = [section("Across the grid", html_table(grid_cells(summary)))]
    if any("gain" in line for *_, line in lines):
        sections.append(section(f"Gain vs {keys[0]}", image(plots.sweep_gains(keys, lines), f"gain vs {keys[0]}")))
    command = " ".join(["fedbridge sweep", summary["config"], *(f"--set '{s}'" for s in summary["overrides"]),
                        *(f"--grid {k}={','.join(v)}" for k, v in summary["grid"]), f"--seeds {len(summary['seeds'])}"])
    sections.append(section("What ran", f"<pre>{html.escape(command)}</pre>",
                            f"Each cell and seed is a run directory under {out / 'runs'}; `fedbridge report` draws any of them."))
    return page(f"{summary['name']} sweep: {summary['dataset']}, {len(summary['seeds'])} seeds per cell", sections)


def is_report(path: Path) -> bool:
    """Whether `path` is a page `write_report` wrote (it has the generator tag near its start)."""
    try:
        with open(path, "rb") as f:
            return GENERATOR in f.read(1024)
    except OSError:
        return False


def check_output(path: Path, output: Path, fix: str) -> None:
    """Refuse an output that would destroy something: a directory, a file of the run or sweep
    itself, or any existing file that is not an earlier report."""
    if output.is_dir():
        raise FedbridgeError(f"cannot write {output}: it is a directory; {fix}")
    own = output.resolve() == (path / REPORT).resolve()
    if not own and output.resolve().is_relative_to(path.resolve()):
        raise FedbridgeError(f"cannot write {output}: it is inside {path}, where the report goes only to {REPORT} "
                             f"(the other files are the results); nothing was changed, {fix}")
    # the run's own report.html may predate the generator tag; any other file must carry it
    if output.exists() and not own and not is_report(output):
        raise FedbridgeError(f"{output} exists and is not a fedbridge report; nothing was changed. Remove it first or {fix}")
    if not output.parent.is_dir():
        raise FedbridgeError(f"cannot write {output}: folder {output.parent} does not exist; create it or {fix}")


def write_report(path: Path, output: Path | None = None, data_dir: Path | None = None) -> Path:
    """Write the report of the run or sweep in `path`; returns where it went (default path/report.html)."""

    path = Path(path)
    # first: that this is no finished run (nor an advice directory, which has advise.json instead) matters more than -o
    summary = None if (advised := advice.advice_page(path)) else results.read_summary(path)
    target = Path(output) if output else path / REPORT
    # `fedbridge sweep` writes the default too, and has no -o: so say the whole command
    fix = "choose another -o" if output else f"write the report elsewhere with `fedbridge report {path} -o FILE`"
    check_output(path, target, fix)
    text = advised or (sweep_page(path, summary) if (path / results.SWEEP_SPEC).exists() else run_page(path, summary, data_dir))
    try:
        files.atomic_write(target, text)
    except OSError as e:
        raise FedbridgeError(f"cannot write {target}: {e.strerror or e}; {fix}") from None
    return target
