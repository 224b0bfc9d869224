"""`fedbridge show --format`: a run's results as text for other programs and documents: summary.json's
long-format rows as JSON or CSV, and the before/after table as GitHub Markdown with the terminal's cells."""

import csv
import io
import json

from fedbridge.report.table import Cells, main_cells
from fedbridge.schema import row_columns


def as_json(summary: dict) -> str:
    return json.dumps(summary["table"], indent=2, ensure_ascii=False) + "\n"


def as_csv(summary: dict) -> str:
    """One line per row of summary.json's table, the columns in the schema's order."""
    out = io.StringIO()
    # "\n": printed to a terminal or a pipe; the csv module reads either line ending back
    writer = csv.DictWriter(out, fieldnames=row_columns(summary["table"]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["table"])
    return out.getvalue()


def markdown_table(cells: Cells) -> str:
    """A GitHub Markdown table: a header, the alignment line (numbers right-aligned), one line per row."""
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = "|" + "|".join("---:" if right else "---" for _, right in cells.columns) + "|"
    return "\n".join([line([header for header, _ in cells.columns]), align, *map(line, cells.rows)]) + "\n"


def as_markdown(summary: dict) -> str:
    return markdown_table(main_cells(summary))


# what `show --format NAME` prints; "table" is the terminal's rich tables (report/table.py `render`)
TEXT = {"json": as_json, "csv": as_csv, "markdown": as_markdown}
