"""The `fedbridge` command. Every user-fixable problem ends as one clear message and a non-zero exit."""

import functools
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from fedbridge.errors import ConfigError, FedbridgeError

# a table piped to a file or CI log keeps its full width instead of being cut to 80 columns
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)


def friendly(command):
    """Turn fedbridge's own errors into a message and exit code instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FedbridgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; finished files are complete, summary.json is written only at the end", err=True)
            sys.exit(130)

    return wrapper


@click.group()
@click.version_option(package_name="fedbridge")
def main() -> None:
    """Federated learning across clients whose data differ in quality."""


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.rounds=5.")
@click.option("--seeds", type=click.IntRange(min=1), help="Number of seeds (seed, seed+1, ...).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/NAME-TIME).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding mnist/ and fashion-mnist/.")
@friendly
def run(config: Path, overrides: tuple[str, ...], seeds: int | None, out: Path | None, data_dir: Path | None) -> None:
    """Run the study in CONFIG and print the per-client table."""
    from fedbridge.experiment import load_experiment
    from fedbridge.report.table import render
    from fedbridge.study import run_study

    if seeds is not None:
        overrides = (*overrides, f"seeds={seeds}")
    exp, _ = load_experiment(config, list(overrides))
    out = out or Path("runs") / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_study(exp, out, data_dir, stderr)
    render(summary, stdout)
    stdout.print(f"run directory: {out}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@friendly
def show(run_dir: Path) -> None:
    """Print the table of a finished run again."""
    from fedbridge.report.table import render
    from fedbridge.results import read_summary

    render(read_summary(run_dir), stdout)


@main.group()
def data() -> None:
    """Datasets: where they are found and whether they verify."""


@data.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding mnist/ and fashion-mnist/.")
@friendly
def check(data_dir: Path | None) -> None:
    """Say which datasets are found where, verified or not."""
    from fedbridge.data.idx import DATASETS, locate

    missing = 0
    for name in DATASETS:
        found = locate(name, data_dir)
        click.echo(f"{name}:")
        for c in found:
            click.echo(f"  {c.summary()}")
        missing += not any(c.ok for c in found)
    if missing:
        raise FedbridgeError(f"{missing} dataset(s) not found or not verified; see above, and README 'Data'")
if __name__ == "__main__":
    main()
