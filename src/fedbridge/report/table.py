"""The before/after table a person reads, rendered from summary.json's long-format rows."""

from rich.console import Console
from rich.table import Table

from fedbridge.schema import LOCAL
from fedbridge.strategies.registry import title

CROSS_TABLE_MAX_CLIENTS = 10  # beyond this the clients-by-clients grid is unreadable in a terminal


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


def render(summary: dict, console: Console) -> None:
    rows = {(r["client"], r["method"], r["test_set"]): r for r in summary["table"]}
    profiles = {r["client"]: r["profile"] for r in summary["table"]}
    clients = sorted(profiles)
    methods = summary["methods"]
    strategy = summary["strategy"]
    seeds = summary["seeds"]
    caption = (
        f"{summary['dataset']} ({summary['data_source']}), accuracy % "
        + (f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}")
        + f", after {summary['rounds']} rounds"
    )
    main = Table(title=f"{summary['name']}: what joining the federation changed", caption=caption)
    main.add_column("client", justify="right")
    main.add_column("data")
    for m in methods:
        main.add_column(f"{title(m)}, own test", justify="right")
        if m in (strategy, "fedavg") and LOCAL in methods:
            main.add_column("gain", justify="right")
    for m in methods:
        main.add_column(f"{title(m)}, clean test", justify="right")
    for c in clients:
        cells = [str(c), profiles[c]]
        for m in methods:
            cells.append(_cell(rows, (c, m, "own")))
            if m in (strategy, "fedavg") and LOCAL in methods:
                cells.append(_gain(rows, c, m))
        cells += [_cell(rows, (c, m, "clean")) for m in methods]
        main.add_row(*cells)
    console.print(main)

    if LOCAL in methods and any(k[2].startswith("client:") for k in rows) and len(clients) <= CROSS_TABLE_MAX_CLIENTS:
        cross = Table(title="each model on each client's own test data (accuracy %)")
        cross.add_column("model")
        for c in clients:
            cross.add_column(f"client {c} test ({profiles[c]})", justify="right")
        for c in clients:
            test = lambda t: "own" if t == c else f"client:{t}"  # noqa: E731
            cross.add_row(f"client {c} alone", *[_cell(rows, (c, LOCAL, test(t))) for t in clients])
        for m in methods:
            if m != LOCAL:
                cross.add_row(title(m), *[_cell(rows, (t, m, "own")) for t in clients])
        console.print(cross)
    if summary.get("detection"):
        found = Table(title="noisy-client detection: ROC-AUC of each score against the configured profiles"
                      + (" (mean over seeds)" if len(seeds) > 1 else ""))
        for col in ("method", "score", "round 1", f"round {summary['rounds']}", "reliable (≥ 0.9 to the end) from round"):
            found.add_column(col, justify="left" if col in ("method", "score") else "right")
        auc = lambda a: "–" if a is None else f"{a:.2f}"  # noqa: E731
        for m, scores in summary["detection"].items():
            for score, d in scores.items():
                found.add_row(title(m), score, auc(d["first"]), auc(d["last"]), str(d["reliable_from"] or "never"))
        console.print(found)
    if summary.get("data_note"):
        console.print(f"[yellow]note:[/yellow] {summary['data_note']}")
    for d in summary.get("diverged", []):
        console.print(
            f"[yellow]warning:[/yellow] seed {d['seed']}, {title(d['method'])}: training diverged (its test loss is "
            "huge or NaN), so its accuracies are those of a broken model; usually a step too large for it: lower "
            "train.lr, or the strategy's step or pull (server_lr, mu, lam)"
        )
    for d in summary.get("chance", []):
        console.print(
            f"[yellow]warning:[/yellow] seed {d['seed']}, {title(d['method'])}: it ends at chance accuracy on the "
            "clean test set (no better than a guess), so it learned nothing usable; usually a step too small or too "
            "large for it (train.lr, or the strategy's server_lr), too few rounds, or labels that are mostly noise"
        )
