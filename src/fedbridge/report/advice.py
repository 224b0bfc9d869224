"""The verdicts of `fedbridge advise` as tables: in the terminal, and as the page `fedbridge report`
writes for an advice directory (one holding advise.json)."""

import html
import json
from pathlib import Path

from rich.console import Console

from fedbridge import results
from fedbridge.errors import FedbridgeError
from fedbridge.report.table import Cells, rich_table

_KEYS = {"client", "profile", "best", "gain", "ci_low", "ci_high", "n_seeds", "verdict", "candidates"}


def read_advice(path: Path) -> list[dict] | None:
    """advise.json's rows, or None if `path` is no advice directory."""
    file = Path(path) / results.ADVICE
    if not file.is_file():
        return None
    try:
        rows = json.loads(file.read_bytes())
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and _KEYS <= r.keys() for r in rows):
        raise FedbridgeError(f"{file} is not fedbridge advice (a list of per-client verdicts); it was edited or "
                             "damaged: run the same `fedbridge advise` command again to write it anew")
    return rows


def _points(row: dict) -> str:
    """'+1.2 [+0.3, +2.1]': the mean gain and its 95% interval, in percentage points."""
    return f"{100 * row['gain']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"


def verdict_text(row: dict) -> str:
    if row["verdict"] == "join":
        return f"join, with {row['best']}"
    if row["verdict"] == "stay":
        return "stay alone"
    more = row.get("more_seeds")
    hint = (f"{more} more seed{'s' * (more > 1)} would settle it if mean and spread held" if more
            else "the gain is too small against its spread to settle in 50 seeds")
    return f"undecided at {row['n_seeds']} seeds ({hint})"


def advice_cells(rows: list[dict]) -> list[Cells]:
    """The verdict per client, then every candidate's gain per client."""
    n = rows[0]["n_seeds"] if rows else 0
    verdicts = Cells(
        "Does joining help each client, and with which strategy?",
        [("client", True), ("data", False), ("best", False), ("gain [95% CI]", True), ("verdict", False)],
        [[str(r["client"]), r["profile"], r["best"], _points(r), verdict_text(r)] for r in rows],
        caption=(f"gain = own-test accuracy with the strategy − alone, percentage points, mean [Student-t 95% CI] "
                 f"over {n} seeds, paired by seed; join: an interval above zero; stay: every interval below zero"),
    )
    names = list(rows[0]["candidates"]) if rows else []
    gains = Cells("Every candidate's gain over alone", [("client", True)] + [(name, True) for name in names],
                  [[str(r["client"]), *(_points(r["candidates"][name]) for name in names)] for r in rows],
                  caption="percentage points, mean [95% CI]")
    return [verdicts, gains]


def render_advice(rows: list[dict], console: Console) -> None:
    for cells in advice_cells(rows):
        console.print(rich_table(cells))


def advice_page(path: Path) -> str | None:
    """The report of an advice directory, or None if `path` is none."""
    from fedbridge.report.html import html_table, page, section  # html hands advice directories to this

    rows = read_advice(path)
    if rows is None:
        return None
    try:
        command = json.loads((Path(path) / results.ADVICE_COMMAND).read_bytes())
    except (OSError, ValueError):  # the command is only shown: the verdicts stand without it
        command = {}
    # the tables carry their own titles: one section holds them, as a run's report does
    tables = [section("Does joining help each client?", "\n".join(html_table(cells) for cells in advice_cells(rows)))]
    asked = " ".join(["fedbridge advise", command.get("config", "CONFIG"),
                      *(f"--set '{s}'" for s in command.get("overrides", [])),
                      f"--strategies {','.join(command.get('strategies', []))}", f"--seeds {command.get('seeds', '')}"])
    tables.append(section("What ran", f"<pre>{html.escape(asked)}</pre>",
                          f"Each candidate is a run directory under {Path(path) / 'runs'}; `fedbridge report` draws any of them."))
    return page(f"Advice per client: {len(rows)} clients", tables)
