"""A deployed round against Flower's floor: where a round's time goes, measured in one run.

On one cluster of a SuperLink and 2 SuperNodes on loopback (processes.cluster), in turn:
1. Flower's own minimal App (benchmarks/echo_app: a 100k-float array to every node and back,
   one message a round): the floor a round on this cluster cannot go below;
2. the seed study's FedAvg (configs/seed.toml, 2 MNIST clients of 24,000 training images), its
   rounds through fedbridge's ServerApp and ClientApp, with each node's seconds per message (start
   of its process and imports, data, training, evaluation; the rest of a step is Flower's: polling,
   scheduling, serialisation);
then, unless --no-study, the whole seed study by `fedbridge deploy configs/seed.toml`, timed from
the command's start to its exit. With --before, step 2 runs as before this benchmark existed:
Flower's SuperExec starting a ClientApp process per message, and evaluation in a message of its own.

    python -m benchmarks.deploy                     # ~3 min on 2 cores
    python -m benchmarks.deploy --rounds 3 --no-study --before
    python -m benchmarks.deploy --rounds 5 --no-study --secagg   # a round with SecAgg+ against without

Target (issue 20): a round at most the floor + the round's node work + 1 s, the study under 120 s.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import entry, positive_int, results_file
from fedbridge.errors import FedbridgeError

ROOT = Path(__file__).parent.parent
ECHO = Path(__file__).parent / "echo_app"
CONFIG = ROOT / "configs" / "seed.toml"


def echo_rounds(running, rounds: int, workdir: Path) -> list[float]:
    from fedbridge.engines.flower.processes import CONNECTION, flwr

    out = workdir / "echo.json"
    config = f'rounds={rounds} nodes={len(running.nodes)} out="{out}"'
    started = flwr(running.env, "run", str(ECHO), CONNECTION, "--run-config", config)
    if started.returncode != 0:
        raise FedbridgeError(f"the echo App did not start: {(started.stderr or started.stdout).strip()[-1000:]}")
    deadline = time.monotonic() + 60 + 60 * rounds
    while not out.exists() and time.monotonic() < deadline:
        running.alive()
        time.sleep(0.2)
    if not out.exists():
        raise FedbridgeError(f"the echo App did not finish within {deadline:.0f} s; logs in {workdir}")
    return json.loads(out.read_text())


def fedavg_rounds(running, rounds: int, train_ahead: bool, secagg=None) -> dict:
    """Round seconds (as the study sees them arrive) and the ServerApp's per-step timings; with
    `secagg` (engines/flower/secagg.SecAgg), trained through SecAgg+."""
    from fedbridge.data.datasets import load_dataset
    from fedbridge.deploy import Faults, flower_train
    from fedbridge.engines.flower import channel
    from fedbridge.experiment import load_experiment
    from fedbridge.federation import build_federation

    exp, _ = load_experiment(CONFIG, [f"train.rounds={rounds}", "baselines=[]"])
    federation = build_federation(load_dataset(exp.data.name), exp, exp.seed)
    seed = exp.seed + (1 if secagg else 0)  # a run folder of its own on the same cluster
    flower_train(running, Faults(round_timeout=300), train_ahead=train_ahead, secagg=secagg)(
        exp.method("fedavg"), federation, exp, seed)
    steps = channel.read_timings(running.workdir / f"seed{seed}-fedavg")
    # the ServerApp's own round times: the study sees the rounds late whenever it is asking Flower
    seconds = [step["seconds"] for step in steps if step["step"] == "round"]
    return {"round_seconds": seconds, "steps": steps}


def breakdown(steps: list[dict]) -> dict:
    """Per round (the first left out: it starts the ServerApp and connects): each part's seconds,
    the node parts as the slower node of each step, the rest of the steps' time as Flower's."""
    rounds: dict[int, dict[str, float]] = {}
    for step in steps:
        if not step["round"] or step["round"] == 1 or not step["nodes"]:
            continue
        parts = rounds.setdefault(step["round"], {"step-seconds": 0.0})
        parts["step-seconds"] += step["seconds"]
        slowest = max(step["nodes"].values(), key=lambda n: sum(n.values()))
        for name, value in slowest.items():
            parts[name] = parts.get(name, 0.0) + value
    medians = {name: statistics.median(r.get(name, 0.0) for r in rounds.values()) for name in
               {k for r in rounds.values() for k in r}}
    work = sum(v for k, v in medians.items() if k in ("seconds-data", "seconds-train", "seconds-evaluate"))
    medians["flower"] = medians.get("step-seconds", 0.0) - work - medians.get("seconds-start", 0.0)
    return medians


def study_seconds(workdir: Path) -> tuple[float, int]:
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedbridge.cli", "deploy", str(CONFIG), "--out", str(workdir / "study")],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return time.monotonic() - began, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds of the echo App and of FedAvg")
    parser.add_argument("--before", action="store_true", help="also FedAvg as before: a process per message, two messages a round")
    parser.add_argument("--secagg", action="store_true", help="also FedAvg through SecAgg+ (deploy --secagg), on the same cluster")
    parser.add_argument("--no-study", action="store_true", help="skip the whole seed study by `fedbridge deploy`")
    parser.add_argument("--json", type=Path, default=Path("deploy.json"))
    args = parser.parse_args()
    out = results_file(args.json)
    try:
        from fedbridge.engines.flower.processes import cluster
    except ImportError as e:
        raise FedbridgeError(f"benchmarks.deploy needs Flower ({e}); install it with: pip install -e '.[flower]'") from None
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="fedbridge-bench-") as tmp:
        workdir = Path(tmp)
        modes = [("after", True)] + ([("before", False)] if args.before else [])
        for name, warm in modes:
            (workdir / name).mkdir()
            with cluster(2, workdir / name, warm=warm) as running:
                floor = echo_rounds(running, args.rounds, workdir / name)
                fedavg = fedavg_rounds(running, args.rounds, train_ahead=warm)
                if args.secagg and warm:
                    from fedbridge.engines.flower.secagg import SecAgg
                    secure = fedavg_rounds(running, args.rounds, train_ahead=True, secagg=SecAgg())
            parts = breakdown(fedavg["steps"])
            report[name] = {"floor_seconds": floor, **fedavg, "breakdown": parts}
            later = fedavg["round_seconds"][1:]
            floor_median, round_median = statistics.median(floor[1:] or floor), statistics.median(later)
            work = sum(parts.get(k, 0.0) for k in ("seconds-data", "seconds-train", "seconds-evaluate"))
            print(f"{name}: echo floor {floor_median:.2f} s a round (rounds {', '.join(f'{s:.2f}' for s in floor)}); "
                  f"FedAvg round {round_median:.2f} s (rounds 2-{args.rounds}: {', '.join(f'{s:.2f}' for s in later)}); "
                  f"node work {work:.2f} s; round - floor - work = {round_median - floor_median - work:+.2f} s (target <= +1)")
            print("  breakdown (median s a round): " + ", ".join(f"{k.removeprefix('seconds-')} {v:.2f}" for k, v in sorted(parts.items())))
            if args.secagg and warm:
                secure_median = statistics.median(secure["round_seconds"][1:])
                report["secagg"] = {**secure, "breakdown": breakdown(secure["steps"])}
                print(f"secagg: FedAvg round {secure_median:.2f} s with SecAgg+ (rounds 2-{args.rounds}: "
                      f"{', '.join(f'{s:.2f}' for s in secure['round_seconds'][1:])}) against {round_median:.2f} s "
                      f"without, on the same cluster: x{secure_median / round_median:.2f}, "
                      f"{secure_median - round_median:+.2f} s a round")
        if not args.no_study:
            seconds, code = study_seconds(workdir)
            report["study_seconds"], report["study_exit"] = seconds, code
            print(f"whole seed study deployed (`fedbridge deploy configs/seed.toml`): {seconds:.1f} s, exit {code} (target < 120 s)")
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    entry(main)
