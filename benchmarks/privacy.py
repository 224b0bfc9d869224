"""Privacy against utility (issue 17): DP-SGD anchors and client-level DP-FedAvg tables.

- anchors: DP-SGD on MNIST, one client holding all training data (test_fraction 0.001 keeps 60
  images as its own test split; the table reports MNIST's 10,000 test images), at the ε (δ = 1e-5)
  of TensorFlow Privacy's tutorial and Opacus's MNIST example, σ found by the RDP accountant for the
  epochs and batch used: the sources' own (--their-settings) or the flags'. Model: their CNN (dp-cnn)
  by default.
- federation: 100 MNIST clients of 600 images (90 clean, 10 with symmetric label noise 0.5),
  client_fraction 0.1, FedAvg with client-level DP at ε in {inf, 8, 4, 2, 1}: the clean and the noisy
  clients' own-test accuracy, the clean test accuracy and the detection scores' last ROC-AUC.
- seed: the seed study (configs/seed.toml: 2 clients of 30,000, client 2 with input noise) at the
  same ε; its two clients take part in every round.

Each finished run is appended to a JSON-lines file; `--table` prints the Markdown tables of what is there.

    python -m benchmarks.privacy anchors --their-settings --out benchmarks/results/privacy.jsonl
    python -m benchmarks.privacy anchors --model mlp --epochs 5 --lr 0.5 --batch-size 256 --out benchmarks/results/privacy.jsonl
    python -m benchmarks.privacy federation --rounds 50 --out benchmarks/results/privacy.jsonl
    python -m benchmarks.privacy seed --out benchmarks/results/privacy.jsonl
    python -m benchmarks.privacy steps --batch-size 256
    python -m benchmarks.privacy --table benchmarks/results/privacy.jsonl
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from benchmarks import entry, non_negative_int, positive_float, positive_int, results_file
from fedbridge.experiment import load_experiment, validate
from fedbridge.privacy import accountant, budget
from fedbridge.study import run_study

ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Anchor:
    """A published DP-SGD result on MNIST (δ = 1e-5) and the settings it was trained with: TF Privacy's
    tutorials/README.md table (batch 256, 256 microbatches) and Opacus's examples/mnist_README.md
    (Poisson sampling at 0.004, an expected batch of 240), both plain SGD on their small CNN (dp-cnn)."""

    source: str
    epsilon: float
    accuracy: float  # % on MNIST's test set, their mean over 10 runs
    epochs: int
    lr: float
    noise_multiplier: float  # theirs; fedbridge calibrates its own σ for the same ε
    clip: float
    batch_size: int


ANCHORS = [Anchor("TF Privacy", 1.20, 95.0, 10, 0.32, 1.2, 1.0, 256),
           Anchor("TF Privacy", 2.92, 96.6, 60, 0.08, 1.12, 1.0, 256),
           Anchor("TF Privacy", 9.74, 97.3, 30, 0.4, 0.6, 1.0, 256),
           Anchor("Opacus", 1.19, 94.63, 15, 0.25, 1.3, 1.5, 240),
           Anchor("Opacus", 3.01, 96.78, 60, 0.15, 1.1, 1.0, 240),
           Anchor("Opacus", 7.10, 97.09, 45, 0.25, 0.7, 1.5, 240)]
EPSILONS: list = [None, "clip", 8.0, 4.0, 2.0, 1.0]  # None: no DP; "clip": the clipped mean alone, no noise
DELTA = 1e-5
FEDERATION_CLIENTS = [{"count": 90, "profile": "clean"}, {"count": 10, "profile": {"name": "symmetric", "rate": 0.5}}]


def anchor_experiment(sigma: float, epochs: int, lr: float, clip: float, batch_size: int, model: str, seed: int = 0) -> dict:
    return {
        "name": "privacy-anchor", "seed": seed, "data": {"name": "mnist"}, "partition": {"name": "iid"},
        "clients": [{"count": 1}], "test_fraction": 0.001, "model": model,
        "train": {"optimizer": "sgd", "lr": lr, "batch_size": batch_size, "rounds": epochs},
        "baselines": [], "eval": {"every": epochs, "cross_clients": False},
        "privacy": {"level": "sample", "noise_multiplier": sigma, "clip": clip},
    }


def federation_experiment(epsilon: float | None, args) -> dict:
    tree = {
        "name": "privacy-federation", "data": {"name": "mnist"}, "partition": {"name": "iid", "samples_per_client": 600},
        "clients": FEDERATION_CLIENTS, "model": "mlp",
        "train": {"optimizer": "sgd", "lr": args.lr, "batch_size": 10, "rounds": args.rounds, "client_fraction": 0.1},
        "baselines": ["local"] if epsilon is None else [], "eval": {"every": args.rounds, "cross_clients": False},
    }
    if epsilon == "clip":
        tree["strategy"] = {"name": "clipping", "max_norm": args.clip}
    elif epsilon is not None:
        tree["privacy"] = {"level": "client", "target_epsilon": epsilon, "clip": args.clip, "accountant": args.accountant}
    return tree


def _train(tree_or_exp, data_dir: Path | None) -> tuple[dict, float]:
    exp = tree_or_exp if not isinstance(tree_or_exp, dict) else validate(tree_or_exp)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_study(exp, Path(tmp) / "run", data_dir, Console(quiet=True), quiet=True)
    return summary, time.perf_counter() - start


def _accuracy(summary: dict, method: str, test_set: str, clients: set[int] | None = None) -> float:
    return 100 * statistics.fmean(r["accuracy_mean"] for r in summary["table"] if r["method"] == method
                                  and r["test_set"] == test_set and (clients is None or r["client"] in clients))


def _append(out: Path, line: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))


def _settings(anchor: Anchor, args) -> dict:
    """What an anchor trains with: its source's epochs, lr, clip and batch (--their-settings), or the flags'."""
    if args.their_settings:
        return {"epochs": anchor.epochs, "lr": anchor.lr, "clip": anchor.clip, "batch_size": anchor.batch_size}
    return {"epochs": args.epochs, "lr": args.lr, "clip": args.clip, "batch_size": args.batch_size}


def anchors(args) -> None:
    """Each chosen anchor once; one already in --out with the same settings is skipped (a stopped
    benchmark re-run with the same command carries on)."""
    n = 60_000 - round(0.001 * 60_000)
    done = [json.loads(t) for t in args.out.read_text().splitlines() if t.strip()] if args.out.exists() else []
    for anchor in [a for a in ANCHORS if a.source in args.sources and (not args.targets or a.epsilon in args.targets)]:
        run = {**_settings(anchor, args), "model": args.model, "seed": args.seed}
        key = {"table": "anchors", "source": anchor.source, "target_epsilon": anchor.epsilon, **run}
        # a line from before seeds were recorded ran seed 0
        if any(all(line.get(k, 0 if k == "seed" else None) == v for k, v in key.items())
               and (line.get("their_sigma") is True) == args.their_sigma
               for line in done):
            print(f"{anchor.source} ε = {anchor.epsilon}: already in {args.out}; skipped")
            continue
        mech = budget.sample_mechanism(n, run["batch_size"], 1)
        sigma = (anchor.noise_multiplier if args.their_sigma
                 else accountant.calibrate(anchor.epsilon, mech, run["epochs"], DELTA, "rdp"))
        summary, seconds = _train(anchor_experiment(sigma, **run), args.data_dir)
        _append(args.out, {**key, "reported": anchor.accuracy, "their_sigma": args.their_sigma,
                           "epsilon": summary["privacy"]["epsilon"], "sigma": sigma,
                           "accuracy": _accuracy(summary, "fedavg", "clean"), "seconds": seconds,
                           "seconds_per_epoch": seconds / run["epochs"], "load": os.getloadavg()[0]})


def _utility_line(name: str, summary: dict, method: str, epsilon: float | None, noisy: set[int], seconds: float) -> dict:
    clients = {r["client"] for r in summary["table"]}
    detection = {score: d["last"] for score, d in summary.get("detection", {}).get(method, {}).items()}
    privacy = summary.get("privacy") or {}
    return {"table": name, "target_epsilon": epsilon, "epsilon": privacy.get("epsilon"),
            "sigma": privacy.get("noise_multiplier"), "accountant": privacy.get("accountant"),
            "clean_own": _accuracy(summary, method, "own", clients - noisy),
            "noisy_own": _accuracy(summary, method, "own", noisy) if noisy else None,
            "alone_clean_own": _accuracy(summary, "local", "own", clients - noisy) if "local" in summary["methods"] else None,
            "alone_noisy_own": _accuracy(summary, "local", "own", noisy) if noisy and "local" in summary["methods"] else None,
            "clean_test": _accuracy(summary, method, "clean"), "detection_last_auc": detection,
            "rounds": summary["rounds"], "seconds": seconds}


def federation(args) -> None:
    noisy = set(range(91, 101))
    for epsilon in args.epsilons:
        summary, seconds = _train(federation_experiment(epsilon, args), args.data_dir)
        method = "clipping" if epsilon == "clip" else "fedavg"
        _append(args.out, {**_utility_line("federation", summary, method, epsilon, noisy, seconds), "clip": args.clip})


def seed(args) -> None:
    # no "clip" row: the clipped-mean strategy compares at least 3 clients, the seed study has 2
    for epsilon in [e for e in args.epsilons if e != "clip"]:
        private = [] if epsilon is None else [
            "privacy.level=\"client\"", f"privacy.target_epsilon={epsilon}", f"privacy.clip={args.clip}",
            f"privacy.accountant=\"{args.accountant}\"", 'baselines=[]']
        exp, _ = load_experiment(ROOT / "configs" / "seed.toml", [f"train.rounds={args.rounds}", *private])
        summary, seconds = _train(exp, args.data_dir)
        _append(args.out, {**_utility_line("seed", summary, "fedavg", epsilon, {2}, seconds), "clip": args.clip})


def steps(args) -> None:
    """One DP-SGD step's clipped per-example sum on dp-cnn (batch --batch-size, 28x28), side by side with
    the same step without DP (one autograd backward of the mean loss): through the Linear/Conv2d
    formulas (what training runs), and torch.func's vmap's per-example gradients alone (what a model
    with other layers takes). CPU seconds of this process, which a loaded machine inflates less than
    wall time."""
    import copy

    from torch.nn import functional as F

    from fedbridge import losses, per_sample, pooling
    from fedbridge.models import build_model

    model = build_model("dp-cnn", (1, 28, 28), 10)
    fast = pooling.with_fast_pools(copy.deepcopy(model))
    b = args.batch_size
    params = {n: t.detach().unsqueeze(0) for n, t in model.state_dict().items()}
    x, y = torch.rand(1, b, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(b).remainder(10).view(1, b)

    def plain():
        model.zero_grad()
        F.cross_entropy(model(x[0]), y[0]).backward()

    ways = {"without DP (autograd)": plain,
            "DP, Linear/Conv2d formulas": lambda: per_sample.clipped_sum(model, params, x, y, torch.ones(1, b), 1.0,
                                                                         fast=fast),
            "DP, torch.func vmap (gradients only)": lambda: per_sample._by_vmap(model, params, x, y, losses.CE)}
    times = {}
    for name, f in ways.items():
        f()
        start = time.process_time()
        for _ in range(args.repeats):
            f()
        times[name] = (time.process_time() - start) / args.repeats
    base = times["without DP (autograd)"]
    for name, t in times.items():
        print(f"{name}: {1000 * t:.1f} CPU ms a step of {b}, {t / base:.2f}x; an MNIST epoch {t * 60_000 / b:.0f} CPU s")
    print(f"load {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} thread(s)")


def _epsilon(text: str) -> float | str | None:
    if text in ("inf", "clip"):
        return None if text == "inf" else text
    return positive_float(text)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def table(paths: list[Path]) -> None:
    lines = [json.loads(t) for p in paths for t in p.read_text().splitlines() if t.strip()]
    anchor = [x for x in lines if x["table"] == "anchors"]
    if anchor:
        print("| source | reported ε | its accuracy | fedbridge σ | fedbridge ε | fedbridge accuracy | gap | epochs, batch, lr, clip, model, seed |")
        print("|---|---|---|---|---|---|---|---|")
        for x in anchor:
            theirs = " (theirs)" if x.get("their_sigma") is True else ""
            print(f"| {x['source']} | {x['target_epsilon']} | {x['reported']} | {x['sigma']:.3f}{theirs} | {x['epsilon']:.2f} | "
                  f"{x['accuracy']:.2f} | {x['accuracy'] - x['reported']:+.2f} | {x['epochs']}, {x['batch_size']}, "
                  f"{x['lr']}, {x['clip']}, {x['model']}, {x.get('seed', 0)} |")
    for name in ("seed", "federation"):
        rows = [x for x in lines if x["table"] == name]
        if not rows:
            continue
        print(f"\n{name}\n\n| target ε | ε spent (accountant) | σ | clean clients, own test | noisy, own test | clean test | "
              "detection AUC (loss / update_norm / disagreement) |")
        print("|---|---|---|---|---|---|---|")
        for x in rows:
            d = x["detection_last_auc"]
            auc = " / ".join("–" if d.get(s) is None else f"{d[s]:.2f}" for s in ("loss", "update_norm", "disagreement"))
            eps = {None: "∞ (FedAvg)", "clip": "∞ (clipped mean, no noise)"}.get(x["target_epsilon"], x["target_epsilon"])
            spent = "∞" if x["epsilon"] is None else f"{x['epsilon']:.2f} ({x['accountant'].upper()})"
            sigma = "–" if x["sigma"] is None else f"{x['sigma']:.3g}"
            print(f"| {eps} | {spent} | {sigma} | {_pct(x['clean_own'])} | {_pct(x['noisy_own'])} | "
                  f"{_pct(x['clean_test'])} | {auc} |")
        alone = next((x for x in rows if x["alone_clean_own"] is not None), None)
        if alone:
            print(f"(alone: clean clients {_pct(alone['alone_clean_own'])}, noisy {_pct(alone['alone_noisy_own'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["anchors", "federation", "seed", "steps"])
    parser.add_argument("--table", nargs="+", type=Path, help="print the tables of these results files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "privacy.jsonl")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=positive_int, default=15, help="anchors: DP-SGD epochs")
    parser.add_argument("--their-settings", action="store_true",
                        help="anchors: each at its source's epochs, lr, clip and batch (overrides those flags)")
    parser.add_argument("--their-sigma", action="store_true",
                        help="anchors: train with the source's σ (the same mechanism; fedbridge's accountant then "
                             "reports its own, smaller, ε) instead of the σ that reaches the reported ε")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="anchors: the run's seed")
    parser.add_argument("--targets", nargs="+", type=positive_float, default=None,
                        help="anchors: only those of these reported ε (e.g. 1.2 1.19)")
    parser.add_argument("--rounds", type=positive_int, default=50, help="federation and seed: rounds")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="anchors: batch")
    parser.add_argument("--lr", type=positive_float, default=None, help="default: 0.5 for anchors, 0.05 for federation")
    parser.add_argument("--clip", type=positive_float, default=1.0)
    parser.add_argument("--model", default="dp-cnn", choices=["dp-cnn", "mlp", "2nn", "cnn"],
                        help="anchors: dp-cnn is the tutorials' CNN")
    parser.add_argument("--accountant", default="pld", choices=["rdp", "pld"], help="federation and seed")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=10, help="steps: timed steps per way")
    parser.add_argument("--sources", nargs="+", default=["TF Privacy", "Opacus"], choices=["TF Privacy", "Opacus"],
                        help="anchors: whose figures to run against")
    parser.add_argument("--epsilons", nargs="+", default=EPSILONS, type=_epsilon,
                        help="federation and seed: target ε values; 'inf' for no DP, 'clip' for clipping without noise")
    args = parser.parse_args()
    if args.table:
        return table(args.table)
    if args.what is None:
        parser.error("say what to run (anchors, federation, seed, steps) or --table FILE")
    torch.set_num_threads(args.threads)
    args.out = results_file(args.out, "--out")
    args.lr = args.lr or (0.5 if args.what == "anchors" else 0.05)
    {"anchors": anchors, "federation": federation, "seed": seed, "steps": steps}[args.what](args)


if __name__ == "__main__":
    entry(main)
