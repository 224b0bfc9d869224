"""One federation of many MNIST clients with a stateful strategy, as its own process (for its peak RSS).

The speed benchmark (`--only scale10k`) starts it for 10,000 clients and for 100, with the same
clients per round and the same data per client, and compares their time per round. Each round is
what a study's round is: sample, train, aggregate, score eval.clients clients, checkpoint (the
client_state store's files synced, its slots saved). Prints one JSON line.

    python -m benchmarks.scale10k --clients 10000 --per-round 100 --strategy scaffold --rounds 10
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import entry, positive_int
from fedbridge import client_state, rounds
from fedbridge.data.datasets import load_dataset
from fedbridge.errors import FedbridgeError
from fedbridge.engines import simulation
from fedbridge.experiment import validate
from fedbridge.federation import build_federation, client_rows
from fedbridge.models import build_model
from fedbridge.results import save_checkpoint

ROOT = Path(__file__).parent.parent
SAMPLES_PER_CLIENT = 6  # 60,000 MNIST images over 10,000 clients: 5 to train and 1 to test each


def experiment(clients: int, per_round: int, strategy: str, rounds_: int, eval_clients: int):
    return validate({
        "name": "scale", "clients": [{"count": clients}], "model": "2nn",
        "partition": {"name": "iid", "samples_per_client": SAMPLES_PER_CLIENT},
        "train": {"lr": 0.05, "batch_size": 10, "local_epochs": 1, "rounds": rounds_,
                  "client_fraction": per_round / clients},
        "strategy": {"name": strategy}, "baselines": [],
        "eval": {"clients": eval_clients, "cross_clients": False},
    })


def _spread(trials: list[float]) -> dict:
    return {"median": statistics.median(trials), "min": min(trials), "max": max(trials), "trials": trials}


def _run(args: list[str]) -> dict:
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise FedbridgeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def section(trials: int, rounds: int, threads: int) -> list[dict]:
    """10,000 clients against 100, for SCAFFOLD and Ditto: each trial runs the four alternated, in
    their own processes; the figure is the median over trials of each trial's median round."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(trials):
        for strategy in ("scaffold", "ditto"):
            for clients in (10_000, 100):
                out = _run([sys.executable, "-m", "benchmarks.scale10k", "--clients", str(clients), "--per-round",
                            "100", "--strategy", strategy, "--rounds", str(rounds), "--threads", str(threads)])
                runs.setdefault((strategy, clients), []).append(out)
    rows = []
    for strategy in ("scaffold", "ditto"):
        big, small = runs[(strategy, 10_000)], runs[(strategy, 100)]

        def per_round(outs: list[dict], key: str) -> dict:
            return _spread([statistics.median(o[key][1:]) for o in outs])

        wall_big, wall_small = per_round(big, "round_seconds"), per_round(small, "round_seconds")
        cpu_big, cpu_small = per_round(big, "round_cpu_seconds"), per_round(small, "round_cpu_seconds")
        train_big, train_small = per_round(big, "training_seconds"), per_round(small, "training_seconds")
        rss = max(o["peak_rss_mb"] for o in big)
        ratio = wall_big["median"] / wall_small["median"]
        rows.append({
            "strategy": strategy, "s_per_round_10k": wall_big, "s_per_round_100": wall_small,
            "cpu_s_per_round_10k": cpu_big, "cpu_s_per_round_100": cpu_small,
            "training_s_per_round_10k": train_big, "training_s_per_round_100": train_small,
            "eval_s_10k": statistics.median(e for o in big for e in o["eval_seconds"][1:]),
            "eval_s_100": statistics.median(e for o in small for e in o["eval_seconds"][1:]),
            "ratio": ratio, "cpu_ratio": cpu_big["median"] / cpu_small["median"],
            "training_ratio": train_big["median"] / train_small["median"],
            "peak_rss_mb_10k": rss, "peak_rss_mb_100": max(o["peak_rss_mb"] for o in small),
            "state_on_disk_mb": statistics.median(o["state_on_disk_mb"] for o in big),
            "partition_s": statistics.median(o["partition_s"] for o in big),
            "federation_s": statistics.median(o["federation_s"] for o in big),
            "rss_target_met": rss <= 4096, "time_target_met": ratio <= 1.2,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive_int, default=10_000)
    parser.add_argument("--per-round", type=positive_int, default=100)
    parser.add_argument("--strategy", choices=["scaffold", "ditto"], default="scaffold")
    parser.add_argument("--rounds", type=positive_int, default=10, help="timed rounds, after one warm-up round")
    # each scored with its own model on the 10,000 clean test images too: Ditto's 100 personal models
    # took 13 s of CPU a round there, at both sizes, against 1.5-2 s for training
    parser.add_argument("--eval-clients", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    exp = experiment(args.clients, args.per_round, args.strategy, args.rounds + 1, args.eval_clients)
    dataset = load_dataset("mnist", progress=False)
    began = time.perf_counter()
    rows = client_rows(dataset.train_labels, exp, exp.seed)
    partitioned = time.perf_counter()
    federation = build_federation(dataset, exp, exp.seed, rows)
    built = time.perf_counter()
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    method = exp.method(exp.strategy.name)
    transport = simulation.transport(model, federation, simulation.participants(method, federation),
                                     rounds.recipe(exp), exp.seed)
    scoring = []  # (wall, CPU) seconds each evaluation took, to tell training from scoring

    def timed(evaluate):
        def run(*args):
            began = time.perf_counter(), time.process_time()
            scores = evaluate(*args)
            scoring.append((time.perf_counter() - began[0], time.process_time() - began[1]))
            return scores

        return run

    # all clients scored (the 100-client federation) or some (eval.clients of 10,000)
    transport = replace(transport, evaluate=timed(transport.evaluate), evaluate_some=timed(transport.evaluate_some))
    marks = [(time.perf_counter(), time.process_time())]
    with tempfile.TemporaryDirectory(prefix="fedbridge-scale-") as tmp:
        run = Path(tmp)

        def on_round(r, records, diagnostics, state):
            client_state.checkpointed(state.extra, r, run, lambda extra: save_checkpoint(
                run, {"round": r, "params": state.params, "extra": extra}))
            marks.append((time.perf_counter(), time.process_time()))

        with client_state.files_in(run / client_state.FOLDER):
            schedule = rounds.schedule(method, exp, exp.seed, [c.profile for c in federation.clients])
            strategy = rounds.strategy(method, exp, model, schedule)
            rounds.train(strategy, transport, rounds.initial_model(model, exp.seed), schedule, on_round)
        # blocks, not sizes: the files are sparse, and hold only the clients written
        on_disk = sum(f.stat().st_blocks * 512 for f in (run / client_state.FOLDER).rglob("*") if f.is_file())
    # wall time, and the process's CPU time (all its threads): on a machine busy with other work the
    # CPU time is what the federation itself cost
    seconds = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    # the round without its evaluation: sampling, training, aggregating and the checkpoint
    training = [t - e for t, (e, _) in zip(seconds, scoring)]
    training_cpu = [t - e for t, (_, e) in zip(cpu, scoring)]
    print(json.dumps({
        "clients": args.clients, "per_round": args.per_round, "strategy": args.strategy,
        "partition_s": partitioned - began, "federation_s": built - partitioned,
        "round_seconds": seconds, "round_cpu_seconds": cpu, "training_seconds": training,
        "training_cpu_seconds": training_cpu, "eval_seconds": [e for e, _ in scoring], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_on_disk_mb": on_disk / 2**20,
    }))


if __name__ == "__main__":
    entry(main)
