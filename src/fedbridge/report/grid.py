"""A sweep's result as one table: per grid cell and client, alone vs federated and the gain with its
95% confidence interval; read from the sweep's summary.json rows."""

from rich.console import Console

from fedbridge import results
from fedbridge.report.table import Cells, rich_table


def interval(row: dict | None, signed: bool = False) -> str:
    """'+1.2 ± 0.4 [+0.3, +2.1]' in percentage points: mean ± std [95% CI]; just the mean for one seed."""
    if row is None:
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * row["mean"])
    if row["ci_low"] is not None and row["ci_high"] is not None:
        # clipped here too for sweep summaries written before summarize_sweep clipped them
        interval = results.clip((row["ci_low"], row["ci_high"]), results.BOUNDS[row["quantity"]])
        low, high = (fmt.format(100 * end) for end in interval)
        text += f" ± {100 * row['std']:.1f} [{low}, {high}]"
    return text


def grid_rows(summary: dict) -> tuple[list[str], list[tuple[tuple, int, str, dict]]]:
    """The grid keys, and one (cell values, client, profile, {quantity: row}) per cell and client, in grid order."""
    keys = [k for k, _ in summary["grid"]]
    lines: dict[tuple, dict] = {}
    for r in summary["table"]:
        values = tuple(r["cell"][k] for k in keys)
        line = lines.setdefault((values, r["client"]), {"profile": r["profile"], "strategy": r["strategy"]})
        line[r["quantity"]] = r
    return keys, [(values, client, line["profile"], line) for (values, client), line in lines.items()]


def grid_cells(summary: dict) -> Cells:
    """The sweep's one table: per grid cell and client, alone, federated and the gain with their intervals."""
    keys, lines = grid_rows(summary)
    seeds = summary["seeds"]
    table = Cells(
        f"{summary['name']}: what joining the federation changed, across the grid",
        [(k, False) for k in keys] + [(name, name in ("client", "alone", "federated", "gain"))
                                      for name in ("client", "data", "strategy", "alone", "federated", "gain")],
        caption=(f"{summary['data_source']}, own-test accuracy %, mean ± std [95% CI, Student t] over "
                 f"{len(seeds)} seeds ({seeds[0]}–{seeds[-1]}); gain = federated − alone, paired by seed"),
    )
    for values, client, profile, line in lines:
        table.rows.append([*values, str(client), profile, line["strategy"], interval(line.get("local")),
                           interval(line.get("federated")), interval(line.get("gain"), signed=True)])
    return table


def render_grid(summary: dict, console: Console) -> None:
    console.print(rich_table(grid_cells(summary)))
