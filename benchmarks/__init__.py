"""Speed and accuracy benchmarks; not part of the test run (`python -m benchmarks.speed`, `python -m benchmarks.mcmahan`)."""

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fedbridge.errors import FedbridgeError

T = TypeVar("T", int, float)


def entry(main: Callable[[], None]) -> None:
    """Run a benchmark's main: fedbridge's own errors (data not found, say) as a message and exit code."""
    try:
        main()
    except FedbridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def results_file(path: Path, flag: str = "--json") -> Path:
    """`path` with its folder made and checked writable before a long run rather than after it;
    the file itself is left alone until the results are written. `flag` is the option it came from."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        problem = "it is a folder" if path.is_dir() else None if os.access(path if path.exists() else path.parent, os.W_OK) else "not writable"
    except OSError as e:
        problem = e.strerror
    if problem:
        raise FedbridgeError(f"cannot write the results file {path} ({problem}); pass a writable path with {flag}")
    return path


def _number(convert: Callable[[str], T], text: str, ok: Callable[[T], bool], wanted: str) -> T:
    """`text` as a number that passes `ok`, else an argparse error (which names the flag) saying what it takes:
    caught at parse time, a bad value never reaches torch or numpy as a traceback mid-run."""
    try:
        value = convert(text)
        if ok(value):
            return value
    except ValueError:
        pass  # not a number at all: the same message as a number out of range
    raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")


def positive_int(text: str) -> int:
    """argparse type of a count: rounds, trials, threads, clients, epochs, seeds."""
    return _number(int, text, lambda v: v >= 1, "a whole number of 1 or more")


def non_negative_int(text: str) -> int:
    """argparse type of a random seed (numpy takes no negative ones)."""
    return _number(int, text, lambda v: v >= 0, "a whole number of 0 or more")


def positive_float(text: str) -> float:
    """argparse type of a learning rate."""
    return _number(float, text, lambda v: math.isfinite(v) and v > 0, "a finite number above 0")


def fraction(text: str) -> float:
    """argparse type of the share of clients sampled per round."""
    return _number(float, text, lambda v: 0 < v <= 1, "a number above 0 and at most 1")


def study_matrix_main(doc: str, out: Path, rounds: int, partitions: list[str], methods: list[str],
                      run: Callable[[argparse.Namespace], None], table: Callable[[list[Path]], str],
                      more: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> None:
    """The command line of a resumable benchmark over partitions x methods x seeds (benchmarks.strategies,
    benchmarks.fedns): run the missing cells into --out, or with --table summarise results files."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, nargs="+", help="summarise results files instead of running")
    parser.add_argument("--out", type=Path, default=out)
    more(parser)
    parser.add_argument("--partitions", nargs="+", default=partitions, choices=partitions)
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--rounds", type=positive_int, default=rounds)
    parser.add_argument("--lr", type=positive_float, default=0.1)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    else:
        run(args)
