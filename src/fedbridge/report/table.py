"""The before/after tables a person reads, computed from summary.json's long-format rows as plain
cells (`Cells`) that the terminal (rich), Markdown and HTML only lay out: a number is the same
string in `fedbridge show`, in `show --format markdown` and in the report."""

from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedbridge.schema import LOCAL
from fedbridge.strategies.registry import title

CROSS_TABLE_MAX_CLIENTS = 10  # beyond this the clients-by-clients grid is unreadable in a terminal


@dataclass(frozen=True)
class Cells:
    """One table: its title, its columns as (header, right-aligned: a number), its rows of strings."""

    title: str
    columns: list[tuple[str, bool]]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def _cell(rows: dict, key: tuple) -> str:
    r = rows.get(key)
    if r is None:
        return "–"
    pct, spread = 100 * r["accuracy_mean"], 100 * r["accuracy_std"]
    return f"{pct:.1f} ± {spread:.1f}" if r["n_seeds"] > 1 else f"{pct:.1f}"


def _gain(rows: dict, client: int, strategy: str) -> str:
    after, before = rows.get((client, strategy, "own")), rows.get((client, LOCAL, "own"))
    if not after or not before:
        return "–"
    return f"{100 * (after['accuracy_mean'] - before['accuracy_mean']):+.1f}"


def _index(summary: dict) -> tuple[dict, dict[int, str]]:
    """The rows by (client, method, test set), and each client's profile."""
    rows = {(r["client"], r["method"], r["test_set"]): r for r in summary["table"]}
    return rows, {r["client"]: r["profile"] for r in summary["table"]}


def client_label(summary: dict, client: int) -> str:
    """A client as people know it: its holder's name in a natural partition, else its number."""
    return next((r["client_name"] for r in summary["table"] if r["client"] == client and "client_name" in r), str(client))


def test_title(summary: dict) -> str:
    """What the run's shared test set is: "clean" (a reference split), or "common" (held out of the user's data)."""
    return "common" if summary.get("common_test") else "clean"


def main_cells(summary: dict) -> Cells:
    """Per client: each method's own-test accuracy (with the gain after the strategy's and FedAvg's),
    then each method's clean-test accuracy."""
    rows, profiles = _index(summary)
    methods, strategy, seeds = summary["methods"], summary["strategy"], summary["seeds"]
    with_gain = [m in (strategy, "fedavg") and LOCAL in methods for m in methods]
    privacy = summary.get("privacy")
    columns = [("client", True), ("data", False)] + [(f"ε, {title(strategy)}", True)] * bool(privacy)
    for m, gain in zip(methods, with_gain):
        columns += [(f"{title(m)}, own test", True)] + [("gain", True)] * gain
    columns += [(f"{title(m)}, {test_title(summary)} test", True) for m in methods]
    table = Cells(
        f"{summary['name']}: what joining the federation changed", columns,
        caption=(f"{summary['dataset']} ({summary['data_source']}), accuracy % "
                 + (f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}")
                 + f", after {summary['rounds']} rounds"
                 + (f"; classes: {', '.join(summary['class_names'])}" if summary.get("class_names") else "")
                 + (_privacy_caption(privacy) if privacy else "")),
    )
    for c in sorted(profiles):
        cells = [client_label(summary, c), profiles[c]]
        if privacy:
            spent = privacy["clients"].get(str(c))
            cells.append("–" if spent is None else f"{spent:.2f}")
        for m, gain in zip(methods, with_gain):
            cells += [_cell(rows, (c, m, "own"))] + [_gain(rows, c, m)] * gain
        table.rows.append(cells + [_cell(rows, (c, m, "clean")) for m in methods])
    return table


def _privacy_caption(p: dict) -> str:
    mode = f" ({p['mode']})" if p["level"] == "client" else ""
    return (f"; {p['level']}-level DP{mode}, σ = {p['noise_multiplier']:.3g}, C = {p['clip']:g}"
            f"{' adaptive' if p['adaptive'] else ''}, ε at δ = {p['delta']:g} by {p['accountant'].upper()}")


def cross_cells(summary: dict) -> Cells | None:
    """Each client's model alone, and each federated method, on every client's own test data; None
    where the run has no such rows or too many clients to read."""
    rows, profiles = _index(summary)
    clients, methods = sorted(profiles), summary["methods"]
    if LOCAL not in methods or not any(k[2].startswith("client:") for k in rows) or len(clients) > CROSS_TABLE_MAX_CLIENTS:
        return None
    table = Cells("each model on each client's own test data (accuracy %)",
                  [("model", False)] + [(f"client {client_label(summary, c)} test ({profiles[c]})", True) for c in clients])
    for c in clients:
        test = lambda t: "own" if t == c else f"client:{t}"  # noqa: E731
        table.rows.append([f"client {client_label(summary, c)} alone", *[_cell(rows, (c, LOCAL, test(t))) for t in clients]])
    table.rows.extend([title(m), *[_cell(rows, (t, m, "own")) for t in clients]] for m in methods if m != LOCAL)
    return table


def detection_cells(summary: dict) -> Cells | None:
    """How well each score tells the noisy clients from the clean ones; None where nothing was scored."""
    if not summary.get("detection"):
        return None
    headers = ("method", "score", "round 1", f"round {summary['rounds']}", "reliable (≥ 0.9 to the end) from round")
    table = Cells("noisy-client detection: ROC-AUC of each score against the configured profiles"
                  + (" (mean over seeds)" if len(summary["seeds"]) > 1 else ""),
                  [(h, h not in ("method", "score")) for h in headers])
    auc = lambda a: "–" if a is None else f"{a:.2f}"  # noqa: E731
    for m, scores in summary["detection"].items():
        for score, d in scores.items():
            table.rows.append([title(m), score, auc(d["first"]), auc(d["last"]), str(d["reliable_from"] or "never")])
    return table


def tables(summary: dict) -> list[Cells]:
    """Every table of a run, in the order they are shown."""
    return [t for t in (main_cells(summary), cross_cells(summary), detection_cells(summary)) if t is not None]


def notes(summary: dict) -> list[tuple[str, str]]:
    """What the reader must know beside the numbers, as (kind, text): the data's note, then the
    seeds whose training diverged or learned nothing."""
    out = [("note", summary["data_note"])] if summary.get("data_note") else []
    if summary.get("common_test"):
        out.append(("note", "the common test set is held out of the data itself (data.common_test_fraction, the same "
                            "rows on every run), not a clean reference split: it is as good as the data it came from"))
    out += [("warning", (
        f"seed {d['seed']}, {title(d['method'])}: training diverged (its test loss is huge or NaN), so its accuracies "
        "are those of a broken model; usually a step too large for it: lower train.lr, or the strategy's step or "
        "pull (server_lr, mu, lam)")) for d in summary.get("diverged", [])]
    out += [("warning", (
        f"seed {d['seed']}, {title(d['method'])}: it ends at chance accuracy on the clean test set (no better than a "
        "guess), so it learned nothing usable; usually a step too small or too large for it (train.lr, or the "
        "strategy's server_lr), too few rounds, or labels that are mostly noise")) for d in summary.get("chance", [])]
    return out


def rich_table(cells: Cells) -> Table:
    table = Table(title=cells.title, caption=cells.caption or None)
    for header, right in cells.columns:
        table.add_column(header, justify="right" if right else "left")
    for row in cells.rows:
        table.add_row(*row)
    return table


def render(summary: dict, console: Console) -> None:
    for cells in tables(summary):
        console.print(rich_table(cells))
    for kind, text in notes(summary):
        # the text is data (paths, profiles), not rich markup: a '[' in it is printed as it is
        console.print(f"[yellow]{kind}:[/yellow] {escape(text)}")
