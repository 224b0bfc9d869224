"""The `fedbridge` command. Every user-fixable problem ends as one clear message and a non-zero exit."""

import functools
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console

from fedbridge.errors import ConfigError, FedbridgeError, Stopped, WriteError

# a table piped to a file or CI log keeps its full width instead of being cut to 80 columns
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)


# options several commands take, declared once (click makes a fresh option for each command)
DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding mnist/ and fashion-mnist/.")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.rounds=5.")
SET_EVERY_RUN = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key in every run.")
SEEDS = click.option("--seeds", type=click.IntRange(min=1), help="Number of seeds (seed, seed+1, ...).")
RUN_OUT = click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/NAME-TIME).")


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def stopped(e: KeyboardInterrupt, then: str) -> NoReturn:
    """Say why the command stopped and what to do next; exit 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    click.echo(f"{f'stopped by {e}' if isinstance(e, Stopped) else 'interrupted'}; {then}", err=True)
    sys.exit(e.exit_code if isinstance(e, Stopped) else 130)


def friendly(command):
    """Turn fedbridge's own errors into a message and exit code instead of a traceback, and SIGTERM
    and SIGHUP (a service manager stopping it, a closed terminal) into the clean stop of Ctrl-C."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            return command(*args, **kwargs)
        except FedbridgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            stopped(e, "finished files are complete, summary.json is written only at the end")
        finally:  # for a caller that runs commands in-process (tests, scripts)
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    return wrapper


@click.group()
@click.version_option(package_name="fedbridge")
def main() -> None:
    """Federated learning across clients whose data differ in quality."""


def _experiment(config: Path, overrides: tuple[str, ...], seeds: int | None, out: Path | None, tag: str):
    """The validated experiment (--seeds is one more override) and its run directory."""
    from fedbridge.api import default_run_dir
    from fedbridge.experiment import load_experiment

    if seeds is not None:
        overrides = (*overrides, f"seeds={seeds}")
    exp, _ = load_experiment(config, list(overrides))
    return exp, out or default_run_dir(exp, tag)


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@SET
@SEEDS
@RUN_OUT
@DATA_DIR
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Continue an interrupted run from its last finished round, with the config saved in it.")
@click.option("--engine", type=click.Choice(["simulation"]),
              help="With --resume: finish a run made by `fedbridge deploy` on the simulation engine (summary.json says so).")
@click.option("--quiet", is_flag=True, help="No progress and no table; print only the run directory (for scripts).")
@friendly
def run(
    config: Path | None, overrides: tuple[str, ...], seeds: int | None, out: Path | None, data_dir: Path | None,
    resume: Path | None, engine: str | None, quiet: bool,
) -> None:
    """Run the study in CONFIG and print the per-client table."""
    from fedbridge.report.table import render
    from fedbridge.results import CONFIG, SUMMARY, load_run_experiment
    from fedbridge.resume import finished_summary
    from fedbridge.study import run_study

    if resume is not None:
        if config or overrides or seeds or out:
            raise ConfigError("--resume RUN_DIR continues with the config saved in RUN_DIR; drop CONFIG, --set, --seeds and --out")
        exp, out = load_run_experiment(resume), resume
    elif engine is not None:
        raise ConfigError("--engine goes with --resume RUN_DIR: a new run trains on the simulation engine, "
                          "`fedbridge deploy` on Flower")
    elif config is None:
        raise ConfigError("give a CONFIG file to run (see configs/), or --resume RUN_DIR to continue an interrupted run")
    else:
        exp, out = _experiment(config, overrides, seeds, out, "")
    if resume is not None and (resume / SUMMARY).exists():
        summary = finished_summary(resume)  # refused if a weights file was damaged or deleted since
        stderr.print(f"{resume} finished already; nothing to resume")
    else:
        try:
            summary = run_study(exp, out, data_dir, stderr, resume=resume is not None, quiet=quiet,
                                switch_engine=engine is not None)
        except KeyboardInterrupt as e:
            stopped(e, f"to continue from the last finished round: fedbridge run --resume {out}")
        except WriteError as e:
            if not (out / CONFIG).is_file():  # it never started: there is nothing to continue
                raise
            raise FedbridgeError(f"{e}. What was written before is kept: once that is fixed, continue from "
                                 f"the last finished round with: fedbridge run --resume {out}") from None
    if not quiet:
        render(summary, stdout)
    stdout.print(f"run directory: {out}")


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@click.option("--nodes", type=click.IntRange(min=1), help="SuperNodes to start, one per client (default: the config's clients).")
@click.option("--tls", is_flag=True, help="Encrypt with a throw-away CA and authenticate every SuperNode by its key.")
@SET
@SEEDS
@RUN_OUT
@DATA_DIR
@click.option("--round-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for the nodes' answers in a round before going on without the silent ones.")
@click.option("--min-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fewer answering nodes than this and the run stops, keeping the finished rounds.")
@click.option("--connect-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for every client's SuperNode to connect before the run stops.")
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Continue an interrupted deployment from its last finished round, on a new cluster.")
@click.option("--superlink", metavar="HOST:PORT", help="Run on this SuperLink's SuperNodes (other machines) instead of starting them here.")
@click.option("--certificates", type=click.Path(path_type=Path, file_okay=False), metavar="FOLDER",
              help="TLS and node keys (python -m fedbridge.engines.flower.certificates); without it, insecure.")
@click.option("--serve-superlink", metavar="HOST:PORT", help="Only start a SuperLink here, listening on HOST:PORT, until Ctrl-C.")
@click.option("--serve-supernode", metavar="SUPERLINK", help="Only start a SuperNode here for --partition-id, connecting to SUPERLINK (HOST:PORT).")
@click.option("--partition-id", type=click.IntRange(min=0), help="With --serve-supernode: which client this node is (0 = client 1).")
@click.option("--data-folder", type=click.Path(path_type=Path), help="With --serve-supernode: this node's own data (IDX folder, or [data]'s file or folder).")
@click.option("--secagg", is_flag=True, help="Secure aggregation (SecAgg+): the server sees only the sum of the clients' updates.")
@click.option("--secagg-shares", type=int, help="With --secagg: shares of each node's secrets (itself and its neighbours; default 3).")
@click.option("--secagg-threshold", type=int, help="With --secagg: shares that rebuild a node's secrets, a dropped node's masks (default 2).")
@click.option("--secagg-clip", type=float, help="With --secagg: update entries are clipped to [-clip, clip] before quantization (default 8.0).")
@click.option("--secagg-quantization", type=int, help="With --secagg: integer levels over [-clip, clip] (default 2^22).")
@friendly
def deploy(
    config: Path | None, nodes: int | None, tls: bool, overrides: tuple[str, ...], seeds: int | None, out: Path | None,
    data_dir: Path | None, round_timeout: float, min_nodes: int, connect_timeout: float, resume: Path | None,
    superlink: str | None, certificates: Path | None, serve_superlink: str | None, serve_supernode: str | None,
    partition_id: int | None, data_folder: Path | None, secagg: bool = False, secagg_shares: int | None = None,
    secagg_threshold: int | None = None, secagg_clip: float | None = None, secagg_quantization: int | None = None,
) -> None:
    """Run the study in CONFIG on Flower: a SuperLink and a SuperNode per client on this machine
    (or, with --superlink, on other machines; --serve-superlink and --serve-supernode start those)."""
    from fedbridge.report.table import render
    from fedbridge.results import SUMMARY, load_run_experiment

    try:
        from fedbridge.deploy import Faults, deploy_study
        from fedbridge.engines.flower import hosts
    except ImportError as e:
        raise FedbridgeError(f"deploy needs Flower ({e}); install it with: pip install -e '.[flower]'") from None
    if serve_superlink or serve_supernode:
        if config or resume or superlink or (serve_superlink and serve_supernode):
            raise ConfigError("--serve-superlink and --serve-supernode each start one piece of a deployment; "
                              "give either one alone (with --certificates), without CONFIG, --resume or --superlink")
        if serve_superlink:
            return hosts.serve_superlink(serve_superlink, certificates, stderr)
        if partition_id is None:
            raise ConfigError("--serve-supernode needs --partition-id I: which client this node is (0 = client 1)")
        return hosts.serve_supernode(serve_supernode, partition_id, certificates, data_folder, data_dir, stderr)
    if resume is not None:
        if config or overrides or seeds or out:
            raise ConfigError("--resume RUN_DIR continues with the config saved in RUN_DIR; drop CONFIG, --set, --seeds and --out")
        if (resume / SUMMARY).exists():
            raise ConfigError(f"{resume} finished already; nothing to resume (`fedbridge show {resume}` prints its table)")
        exp, out = load_run_experiment(resume), resume
    elif config is None:
        raise ConfigError("give a CONFIG file to deploy (see configs/), or --resume RUN_DIR to continue an interrupted one")
    else:
        exp, out = _experiment(config, overrides, seeds, out, "-deploy")
    faults = Faults(round_timeout=round_timeout, min_nodes=min_nodes, connect_timeout=connect_timeout)
    from fedbridge.engines.flower.secagg import SecAgg
    keys = {k: v for k, v in {"shares": secagg_shares, "threshold": secagg_threshold, "clip": secagg_clip,
                              "quantization": secagg_quantization}.items() if v is not None}
    if keys and not secagg:
        raise ConfigError(f"--secagg-{next(iter(keys))} sets up secure aggregation; add --secagg")
    secure = SecAgg(**keys) if secagg else None
    try:
        summary = deploy_study(exp, out, data_dir, stderr, nodes or exp.n_clients, tls, faults, resume is not None,
                               superlink, certificates, secure)
    except KeyboardInterrupt as e:
        stopped(e, f"to continue from the last finished round: fedbridge deploy --resume {out}")
    render(summary, stdout)
    stdout.print(f"run directory: {out}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
# listed here, not read from report/formats.py, so that `--help` and a refused value import no torch
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
              show_default=True, help="table: as `run` prints it; json, csv: summary.json's rows; markdown: the table.")
@friendly
def show(run_dir: Path, fmt: str) -> None:
    """Print the table of a finished run again."""
    from fedbridge.report.formats import TEXT
    from fedbridge.report.table import render
    from fedbridge.results import SWEEP_SPEC, read_summary

    if (run_dir / SWEEP_SPEC).is_file():
        raise FedbridgeError(
            f"{run_dir} is a sweep, not a run: the same `fedbridge sweep` command prints its table again "
            f"(finished runs are not redone), and `fedbridge report {run_dir}` writes its HTML report"
        )
    summary = read_summary(run_dir)
    if fmt == "table":
        render(summary, stdout)
    else:
        click.echo(TEXT[fmt](summary), nl=False)


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--grid", multiple=True, metavar="KEY=V1,V2,...", help="Values to sweep a config key over; repeat for a grid.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per grid cell.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs at once, each its own process.")
@SET_EVERY_RUN
@click.option("--out", type=click.Path(path_type=Path), help="Sweep directory (default sweeps/NAME-HASH: the same command continues it).")
@DATA_DIR
@click.option("--quiet", is_flag=True, help="No progress and no table; print only the sweep directory.")
@click.option("--ray", "ray_address", metavar="HOST:PORT", help="Run the runs as tasks on this Ray cluster (its head's address) instead of --jobs.")
@friendly
def sweep(
    config: Path, grid: tuple[str, ...], seeds: int, jobs: int, overrides: tuple[str, ...], out: Path | None,
    data_dir: Path | None, quiet: bool, ray_address: str | None,
) -> None:
    """Run CONFIG for every combination of --grid values and seed; summarise with 95% confidence intervals.

    Started again after an interruption, it runs only the missing runs."""
    from fedbridge import sweep as sweeps
    from fedbridge.report.grid import render_grid
    from fedbridge.report.html import write_report

    plan = sweeps.plan(config, list(overrides), list(grid), seeds)
    sweeps.check_cells(plan, data_dir)
    if ray_address is not None:  # a cluster that does not answer is named before the sweep directory exists
        if jobs != 1:
            raise ConfigError("--ray runs as many runs at once as the Ray cluster has CPUs; drop --jobs")
        from fedbridge import ray_tasks

        jobs = ray_tasks.connect(ray_address)
    out = out or sweeps.default_dir(plan)
    with sweeps.open_sweep_dir(out, plan):
        if not quiet:
            stderr.print(f"sweep directory: {out}", highlight=False)
        try:
            sweeps.run_all(plan, out, jobs, data_dir, stderr, quiet, ray=ray_address is not None)
        except KeyboardInterrupt as e:
            stopped(e, "finished runs are kept: run the same command again to do only the rest")
        except WriteError as e:
            raise FedbridgeError(f"{e}. Finished runs are kept: once that is fixed, run the same command again "
                                 "to do only the rest") from None
        summary = sweeps.summarize_sweep(out, plan)
        write_report(out)
    if not quiet:
        render_grid(summary, stdout)
    stdout.print(f"sweep directory: {out} (report: {out / 'report.html'})")


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--strategies", metavar="A,B,...", help="Candidate strategies (default: the config's and a short list that fits it).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds, at least 2: each gain gets a 95% interval over them.")
@SET_EVERY_RUN
@click.option("--out", type=click.Path(path_type=Path), help="Advice directory (default advice/NAME-HASH: the same command continues it).")
@DATA_DIR
@click.option("--quiet", is_flag=True, help="No progress; print only the verdicts and the advice directory.")
@friendly
def advise(
    config: Path, strategies: str | None, seeds: int, overrides: tuple[str, ...], out: Path | None,
    data_dir: Path | None, quiet: bool,
) -> None:
    """Train each client alone and with each candidate strategy; say per client whether joining helps, with which.

    Started again after an interruption, it keeps the finished runs and resumes the interrupted one."""
    from fedbridge import advise as advice
    from fedbridge.report.advice import render_advice
    from fedbridge.report.html import write_report

    names = None if strategies is None else [s.strip() for s in strategies.split(",")]
    plan = advice.plan(config, list(overrides), names, seeds)
    for name, why in plan.skipped.items():
        stderr.print(f"[yellow]note:[/yellow] {name} skipped: {why}", highlight=False)
    out = out or advice.default_dir(plan)
    with advice.open_advice_dir(out, plan):
        try:
            advice.train_all(plan, out, data_dir, stderr, quiet)
        except KeyboardInterrupt as e:
            stopped(e, "finished runs are kept: run the same command again to continue")
        rows = advice.advise(plan, out)
        write_report(out)
    render_advice(rows, stdout)
    stdout.print(f"advice directory: {out} (report: {out / 'report.html'})")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="HTML file to write (default RUN_DIR/report.html).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding mnist/ and fashion-mnist/ (for the sample images).")
@friendly
def report(run_dir: Path, output: Path | None, data_dir: Path | None) -> None:
    """Write one self-contained HTML report of a finished run or sweep: tables, curves, samples, confusion matrices."""
    from fedbridge.report.html import write_report

    stdout.print(f"report: {write_report(run_dir, output, data_dir)}")


@main.command()
@click.argument("preset", required=False)
@click.argument("directory", metavar="[DIR]", type=click.Path(path_type=Path), default=".")
@friendly
def init(preset: str | None, directory: Path) -> None:
    """Write the preset config PRESET into DIR (default: here) as PRESET.toml, to start an experiment from.

    Without PRESET, list the presets. An existing file is never overwritten (exit 1)."""
    from importlib.resources import files

    from fedbridge.files import writing

    # the configs/ of the repository, shipped in the package so that an installed fedbridge has them too
    presets = {p.name.removesuffix(".toml"): p for p in files("fedbridge").joinpath("presets").iterdir()
               if p.name.endswith(".toml")}
    if preset is None:
        width = max(map(len, presets))
        for name in sorted(presets):
            first = presets[name].read_text().splitlines()[0]
            click.echo(f"{name:<{width}}  {first.removeprefix('#').strip() if first.startswith('#') else ''}")
        return
    name = preset.removesuffix(".toml")
    if name not in presets:
        raise ConfigError(f"unknown preset {preset!r}; the presets are: {', '.join(sorted(presets))} "
                          "(`fedbridge init` lists them with what each one is)")
    target = directory / f"{name}.toml"
    if target.exists() or target.is_symlink():
        raise FedbridgeError(f"{target} already exists; nothing was changed. Remove it first, or give another DIR")
    if directory.exists() and not directory.is_dir():
        raise FedbridgeError(f"{directory} is a file, not a folder; give a folder as DIR")
    with writing(target):
        directory.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as f:  # "x": a file that appeared since the check above is not overwritten either
            f.write(presets[name].read_bytes())
    click.echo(f"wrote {target}; run it with `fedbridge run {target}` (see README \"Experiments\" for its keys)")


@main.group()
def data() -> None:
    """Datasets: where they are found and whether they verify."""


@data.command()
@DATA_DIR
@friendly
def check(data_dir: Path | None) -> None:
    """Say which datasets are found where, verified or not."""
    from fedbridge.data.catalog import DATASETS
    from fedbridge.data.sources import locate

    missing = 0
    for name in DATASETS:
        found = locate(name, data_dir)
        click.echo(f"{name}:")
        for c in found:
            click.echo(f"  {c.summary()}")
        # a folder given with --data-dir is the one `run` will insist on, so it has to verify itself
        missing += not (found[0].ok if data_dir else any(c.ok for c in found))
    if missing:
        raise FedbridgeError(f"{missing} dataset(s) not found or not verified; see above, and README 'Data'")
if __name__ == "__main__":
    main()
