"""Which way of combining models serves each client best, the noisiest included (issue 5).

Scenario matrix: {MNIST, Fashion-MNIST} x {IID, Dirichlet(0.3)} x seeds; 10 clients: 5 clean,
2 with gaussian input noise sigma 0.5, 1 with sigma 1.0, 2 with symmetric label noise 0.4 (noise on
their training and own test data alike). MLP 784-128-10, SGD. Every strategy runs through the
simulation engine beside "alone" (local); each finished run is appended to a JSON-lines file, so
an interrupted benchmark keeps what it measured and `--table` summarises whatever is there.

    python -m benchmarks.strategies --rounds 10 --seeds 3 --out benchmarks/results/strategies.jsonl
    python -m benchmarks.strategies --table benchmarks/results/strategies*.jsonl
"""

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks import entry, results_file, study_matrix_main
from fedbridge import detection
from fedbridge.strategies.diagnostics import SCORES
from fedbridge.data.datasets import load_dataset
from fedbridge.engines import simulation
from fedbridge.errors import FedbridgeError
from fedbridge.experiment import validate
from fedbridge.federation import build_federation
from fedbridge.results import BOUNDS, confidence_interval

CLIENTS = [
    {"count": 5, "profile": "clean"},
    {"count": 2, "profile": {"name": "gaussian", "sigma": 0.5}},
    {"count": 1, "profile": {"name": "gaussian", "sigma": 1.0}},
    {"count": 2, "profile": {"name": "symmetric", "rate": 0.4}},
]
PARTITIONS = {"iid": {"name": "iid"}, "dirichlet": {"name": "dirichlet", "alpha": 0.3}}
# method label -> strategy table; "local" is training alone
METHODS = {
    "local": None,
    "fedavg": {"name": "fedavg"},
    "fedavgm": {"name": "fedavgm", "server_lr": 0.1, "momentum": 0.9},
    "fedadam": {"name": "fedadam", "server_lr": 0.01},
    "fedyogi": {"name": "fedyogi", "server_lr": 0.01},
    "fedadagrad": {"name": "fedadagrad", "server_lr": 0.01},
    "fedprox": {"name": "fedprox", "mu": 0.01},
    "scaffold": {"name": "scaffold"},
    "fednova": {"name": "fednova"},
    "median": {"name": "median"},
    "trimmed_mean": {"name": "trimmed_mean", "beta": 0.2},
    "krum": {"name": "krum", "byzantine": 2, "select": 1},
    "clipping": {"name": "clipping"},
    "quality": {"name": "quality", "alpha": 5.0},
    "qfedavg": {"name": "qfedavg", "q": 1.0},
    # q-FedAvg's trade-off between FedAvg (q = 0) and fairness, at two smaller q (the paper searches
    # q over 0.001-15 per dataset)
    "qfedavg_q0.1": {"name": "qfedavg", "q": 0.1},
    "qfedavg_q0.01": {"name": "qfedavg", "q": 0.01},
    "afl": {"name": "afl", "step_size": 0.01},
    "bulyan": {"name": "bulyan", "byzantine": 1},
    "eagle": {"name": "eagle", "lam": 1.0, "alone_epochs": 5},
    "fednoro": {"name": "fednoro", "warmup": 5, "mu": 0.1},
    "fedavg_fedns": {"name": "fedavg", "noise_screen": "fedns"},
    "finetune": {"name": "finetune", "epochs": 1},
    "ditto": {"name": "ditto", "lam": 0.1},
    "fedper": {"name": "fedper"},
    "fedrep": {"name": "fedrep", "head_epochs": 1},
}
# what a line is the result of
KEY = ("dataset", "partition", "seed", "method")
# the options besides its key that change a line's numbers: lines differing in them are different experiments
SETTINGS = ("rounds", "lr", "batch_size")


def experiment(dataset: str, partition: str, strategy: dict | None, rounds: int, lr: float, batch_size: int):
    return validate({
        "name": f"strategies-{dataset}-{partition}",
        "data": {"name": dataset},
        "partition": PARTITIONS[partition],
        "clients": CLIENTS,
        "model": "mlp",
        "train": {"optimizer": "sgd", "lr": lr, "batch_size": batch_size, "rounds": rounds},
        "strategy": strategy or {"name": "fedavg"},
        "baselines": ["local"],
        "eval": {"every": rounds, "cross_clients": False},
    })


def read_lines(path: Path, flag: str) -> list[dict]:
    """The results lines in `path`; a file that cannot be read or was not written by this benchmark is
    an error naming `flag`."""
    try:
        with path.open() as f:
            texts = [t for t in f if t.strip()]
    except OSError as e:
        raise FedbridgeError(f"{flag}: cannot read {path} ({e.strerror}); pass a results file of this benchmark") from None
    lines = []
    for number, text in enumerate(texts, 1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            line = None
        if not isinstance(line, dict) or not set(KEY) <= line.keys():
            raise FedbridgeError(f"{flag}: {path} line {number} is not a results line of this benchmark; "
                                 "pass a file it wrote, or remove the line")
        lines.append(line)
    return lines


def key(line: dict) -> tuple:
    return tuple(line[k] for k in KEY)


def settings(line: dict, fields: tuple = SETTINGS) -> tuple:
    # lines written before lr and batch_size were recorded read as None: unlike any new run
    return tuple(line.get(k) for k in fields)


def describe(setting: tuple, fields: tuple = SETTINGS) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {'unrecorded' if value is None else value}" for name, value in zip(fields, setting))


def done_before(out: Path, args, fields: tuple = SETTINGS) -> set[tuple]:
    """The keys of the lines already in `out`, whose settings (`fields`) must be this run's: appending
    other settings would mix two experiments in one file, and resuming would skip runs it never made."""
    if not out.exists():
        return set()
    lines = read_lines(out, "--out")
    ours = settings(vars(args), fields)
    if other := {settings(r, fields) for r in lines} - {ours}:
        shown = "; ".join(describe(o, fields) for o in sorted(other, key=str))
        raise FedbridgeError(
            f"--out {out} holds results run with {shown}, "
            f"not this run's {describe(ours, fields)}: choose another --out, or the same settings to resume it")
    return {key(r) for r in lines}


def run(args) -> None:
    torch.set_num_threads(1)  # the machine is shared; one thread per benchmark process
    out = results_file(args.out, "--out")
    done = done_before(out, args)
    for seed in range(args.seeds):
        for dataset in args.datasets:
            data = load_dataset(dataset, args.data_dir)
            for partition in args.partitions:
                federation = None
                for method in args.methods:
                    if (dataset, partition, seed, method) in done:
                        continue
                    exp = experiment(dataset, partition, METHODS[method], args.rounds, args.lr, args.batch_size)
                    federation = federation or build_federation(data, exp, seed)
                    final: dict = {}
                    diagnostics: list = []

                    def on_round(r, records, reported, state):
                        final.update(records=records)
                        diagnostics.extend(reported)

                    start = time.perf_counter()
                    simulation.train(exp.method("local" if method == "local" else exp.strategy.name), federation, exp,
                                     seed, on_round)
                    noisy = [c.profile != "clean" for c in federation.clients]
                    line = {
                        "dataset": dataset, "partition": partition, "seed": seed, "method": method,
                        **{k: getattr(args, k) for k in SETTINGS}, "seconds": time.perf_counter() - start,
                        "own": {c.index + 1: None for c in federation.clients},
                        "profiles": {c.index + 1: c.profile for c in federation.clients},
                        # "alone" reports losses too, but its detection is not what the table shows
                        "auc": detection.auc_by_round(diagnostics, noisy, args.rounds) if method != "local" else {},
                    }
                    clean = []
                    for rec in final["records"]:
                        if rec["test_set"] == "own":
                            line["own"][rec["client"]] = rec["accuracy"]
                        elif rec["test_set"] == "clean":
                            clean.append(rec["accuracy"])
                    line["clean"] = statistics.fmean(clean)
                    with out.open("a") as f:
                        f.write(json.dumps(line) + "\n")
                    print(f"{dataset} {partition} seed {seed} {method}: clean {100 * line['clean']:.1f}% "
                          f"worst own {100 * min(line['own'].values()):.1f}% ({line['seconds']:.0f} s)", flush=True)


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def one_setting(lines: list[dict], paths: list[Path]) -> tuple:
    """The settings all `lines` share: a table of several would put different experiments side by side."""
    found = {settings(r) for r in lines}
    names = ", ".join(map(str, paths))
    if not found:
        raise FedbridgeError(f"--table: {names} hold no results; pass a file this benchmark has written to")
    if len(found) > 1:
        raise FedbridgeError(f"--table: {names} mix results run with {'; '.join(map(describe, sorted(found, key=str)))}; "
                             "summarise one experiment at a time")
    return found.pop()


def per_client_verdict(runs: list[dict], local: dict) -> tuple[str, int | str]:
    """The worst client's gain over alone (mean over seeds, paired by seed, with its Student-t 95%
    interval) and how many clients are significantly worse off (interval below zero)."""
    paired = [r for r in runs if local.get(r["seed"])]
    if not paired:
        return "–", "–"
    gains = {c: [r["own"][c] - local[r["seed"]]["own"][c] for r in paired] for c in paired[0]["own"]}
    intervals = {c: confidence_interval(g, bounds=BOUNDS["gain"]) for c, g in gains.items()}
    client = min(gains, key=lambda c: statistics.fmean(gains[c]))
    ci = intervals[client]
    shown = f"{100 * statistics.fmean(gains[client]):+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
    if len(paired) < 2:
        return f"{shown} (client {client})", "– (one seed)"
    return f"{shown} (client {client})", sum(1 for i in intervals.values() if i[1] < 0)


def no_client_worse_off(verdicts: dict[str, dict], scenarios: list[tuple]) -> list[str]:
    """Per strategy: the scenarios in which no client ends up significantly worse off than alone, and
    how far its mean client accuracy falls short of the best strategy's there (at most, in points)."""
    if not verdicts:  # only "alone" was run
        return []
    best = {s: max(v[s][1] for v in verdicts.values() if s in v) for s in scenarios if any(s in v for v in verdicts.values())}
    out = ["\n**No client worse off** (scenarios where no client's 95% interval of its gain over alone lies "
           "below zero; mean client accuracy's largest shortfall from the best strategy's, in points)\n",
           "| strategy | scenarios with no client worse off | largest shortfall of mean client accuracy |",
           "|---|---|---|"]
    for m, by in verdicts.items():
        clear = [s for s in scenarios if s in by and by[s][0] == 0]
        unsettled = sum(1 for s in by if not isinstance(by[s][0], int))  # one seed: no interval
        shortfall = max(100 * (best[s] - by[s][1]) for s in by)
        note = f" ({unsettled} with one seed, unsettled)" if unsettled else ""
        out.append(f"| {m} | {len(clear)} of {len(scenarios)}{note} | {shortfall:.1f} |")
    return out


def table(paths: list[Path]) -> str:
    lines = [line for path in paths for line in read_lines(path, "--table")]
    setting = one_setting(lines, paths)
    by = {key(r): r for r in lines}
    scenarios = sorted({(r["dataset"], r["partition"]) for r in lines})
    methods = [m for m in METHODS if any(r["method"] == m for r in lines)]
    out = []
    verdicts: dict[str, dict] = defaultdict(dict)  # strategy -> scenario -> (clients worse off, mean client accuracy)
    for dataset, partition in scenarios:
        seeds = sorted({r["seed"] for r in lines if (r["dataset"], r["partition"]) == (dataset, partition)})
        profiles = by.get((dataset, partition, seeds[0], "local"), lines[0])["profiles"]
        groups = defaultdict(list)  # profile -> clients
        for c, p in profiles.items():
            if p != "clean":
                groups[p].append(c)
        out.append(f"\n**{dataset}, {partition}** ({describe(setting)}, seeds {', '.join(map(str, seeds))}; accuracy %, mean ± std over seeds)\n")
        out.append("| strategy | clean test | mean client, own test | worst client, own test | "
                   + " | ".join(f"gain over alone: {p}" for p in groups)
                   + " | worst client's gain over alone [95% CI] | clients significantly worse off |")
        out.append("|---" * (6 + len(groups)) + "|")
        for m in methods:
            runs = [by[(dataset, partition, s, m)] for s in seeds if (dataset, partition, s, m) in by]
            if not runs:  # run in another scenario only
                continue
            local = {r["seed"]: by.get((dataset, partition, r["seed"], "local")) for r in runs}
            gains = []
            for p, clients in groups.items():
                g = [statistics.fmean(r["own"][c] - local[r["seed"]]["own"][c] for c in clients)
                     for r in runs if local[r["seed"]]]
                gains.append("–" if m == "local" else _pm(g))
            label = m if len(runs) == len(seeds) else f"{m} (seed {', '.join(str(r['seed']) for r in runs)} only)"
            worst, worse_off = ("–", "–") if m == "local" else per_client_verdict(runs, local)
            out.append(
                f"| {label} | {_pm([r['clean'] for r in runs])} | {_pm([statistics.fmean(r['own'].values()) for r in runs])} "
                f"| {_pm([min(r['own'].values()) for r in runs])} | " + " | ".join(gains) + f" | {worst} | {worse_off} |"
            )
            if m != "local":
                verdicts[m][(dataset, partition)] = (worse_off, statistics.fmean(
                    statistics.fmean(r["own"].values()) for r in runs))
    out += no_client_worse_off(verdicts, scenarios)
    out.append("\n**Noisy-client detection under FedAvg** (ROC-AUC of each score against the true profiles, mean over seeds)\n")
    out.append("| scenario | score | round 1 | last round | reliable (AUC ≥ 0.9 to the end) from round |")
    out.append("|---|---|---|---|---|")
    for dataset, partition in scenarios:
        runs = [r for r in lines if (r["dataset"], r["partition"], r["method"]) == (dataset, partition, "fedavg")]
        for score in SCORES:
            curves = [r["auc"][score] for r in runs if score in r["auc"]]
            if not curves:
                continue
            found = detection.summary(curves)
            shown = ["–" if a is None else f"{a:.2f}" for a in (found["first"], found["last"])]
            out.append(f"| {dataset}, {partition} | {score} | {shown[0]} | {shown[1]} | "
                       f"{found['reliable_from'] or 'never'} |")
    return "\n".join(out)


def main() -> None:
    study_matrix_main(__doc__, Path("benchmarks/results/strategies.jsonl"), 10, list(PARTITIONS), list(METHODS), run, table,
                      lambda parser: parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"]))


if __name__ == "__main__":
    entry(main)
