"""How fast fedbridge trains a federation, side by side with a per-client loop and Flower, in one run.

    python -m benchmarks.speed [--quick] [--trials N] [--rounds N] [--threads N] [--json PATH]
                               [--only yardstick,rounds,cnn,bound,job,scaling,seed,scale10k,generic]

Sections (all measured in this run, on this machine):
  yardstick  the dense float32 limit: the best of torch.mm (MKL), oneDNN's matmul and oneDNN's
             convolution in NCHW and channels-last at the CNN's two convolutions (batch 10, 64,
             256), each the best of YARDSTICK_WINDOWS windows, with the windows' spread
  rounds     the McMahan round (100 clients x 600 MNIST images, C=0.1, B=10, plain SGD) with the MLP
             and the 2NN, E=1 and E=5: batched engine, reference loop (run with the default threads
             and with 1 thread; the faster counts), Flower simulation
  cnn        the McMahan CNN round, E=1: batched engine vs reference loop
  bound      what bounds each round: its matmuls and convolutions replayed alone at their shapes
             (benchmarks/bound.py), as fractions of the limit kernel timed beside each
  job        a 15-round 2NN job end to end (process start to test accuracy): fedbridge vs Flower
  scaling    s/round and peak RSS at 10, 100 and 1,000 clients per round (2NN, E=1)
  seed       `fedbridge run configs/seed.toml` end to end
  scale10k   10,000 MNIST clients (2NN), 100 per round, SCAFFOLD and Ditto, beside a 100-client
             federation with the same clients per round and data per client (benchmarks/scale10k.py,
             one process each, alternated, at most 5 timed rounds): time per round and peak RSS
  generic    the generic path for any nn.Module (benchmarks/generic.py) on the MLP and 2NN rounds against
             the kernels and the loop, and on the CIFAR CNN (LeNet-5) round against the loop; not in
             the default run (--only generic)

Methods are interleaved within each trial, so a burst of load on a shared machine hits all of
them; each figure is the median over trials of the trial's median s/round, with the spread
(min-max of the trial medians). The job and the seed study run once per trial, and their wall
times are reported the same way. Flower (`pip install -e '.[flower]'`) is optional: without it
those columns say "skipped". The 1-minute load average is sampled through the run; above the
number of cores plus one (the benchmark itself keeps every core busy), the run warns that its
figures are those of a busy machine.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks import bound, entry, generic, mcmahan_setup as setup, positive_int, results_file, scale10k
from benchmarks.yardstick import LoadWatch, yardstick
from fedbridge.errors import FedbridgeError
from fedbridge.local import Recipe, local_update
from fedbridge.reference import reference_update
from fedbridge.rounds import initial_model

ROOT = Path(__file__).parent.parent
SECTIONS = ("yardstick", "rounds", "cnn", "bound", "job", "scaling", "seed", "scale10k")
EXTRA_SECTIONS = ("generic",)  # run only when named in --only
# the loop also runs single-threaded: one thread often beats two on its tiny kernels, and the
# ratios are taken against whichever of the two is faster in that trial
METHODS = {"batched": (local_update, None), "loop": (reference_update, None), "loop-1-thread": (reference_update, 1)}
ROUND_CONFIGS = [("mlp", 1), ("mlp", 5), ("2nn", 1), ("2nn", 5)]
LR = 0.1


def spread(trials: list[float]) -> dict:
    return {"median": statistics.median(trials), "min": min(trials), "max": max(trials), "trials": trials}


def time_rounds(method: str, fed, model_name: str, epochs: int, rounds: int) -> float:
    """Median s/round over `rounds` FedAvg rounds, after one warm-up round."""
    update, threads = METHODS[method]
    model = setup.model_for(model_name)
    params = initial_model(model, 0)
    recipe = Recipe("sgd", LR, 10, epochs)
    seconds = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for r in range(rounds + 1):
            began = time.perf_counter()
            params = setup.fedavg_round(update, model, params, fed, recipe, 0.1, 0, r + 1)
            seconds.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(before)
    return statistics.median(seconds[1:])


def timed_trials(fed, model_name: str, epochs: int, rounds: int, per: dict) -> None:
    """One trial of every method, interleaved; the loop keeps its faster thread setting."""
    loop_rounds = rounds if epochs == 1 and model_name != "cnn" else max(2, rounds // 3)
    per["batched"].append(time_rounds("batched", fed, model_name, epochs, rounds))
    loops = {m: time_rounds(m, fed, model_name, epochs, loop_rounds) for m in ("loop", "loop-1-thread")}
    best = min(loops, key=loops.get)
    per["loop"].append(loops[best])
    per["loop_threads"].append("1" if best == "loop-1-thread" else "default")


def run_json(args: list[str], env: dict | None = None) -> tuple[dict, float]:
    """Run a benchmark process; its last stdout line as JSON, and its wall time from start to exit."""
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - began
    if done.returncode:
        raise FedbridgeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def flower(model: str, epochs: int, rounds: int) -> dict:
    out, wall = run_json([sys.executable, "-m", "benchmarks.flower_round", "--model", model,
                          "--epochs", str(epochs), "--rounds", str(rounds), "--lr", str(LR)])
    steady = out["round_seconds"][1:]
    return {"steady_s_per_round": statistics.median(steady), "first_round_s": out["round_seconds"][0],
            "job_s": wall, "rounds": rounds, "test_accuracy": out["test_accuracy"]}


def rounds_section(fed, trials: int, rounds: int, with_flower: bool, limit: float, console: Console) -> list[dict]:
    per = {(m, e): {"batched": [], "loop": [], "loop_threads": []} for m, e in ROUND_CONFIGS}
    for trial in range(trials):
        for m, e in ROUND_CONFIGS:
            timed_trials(fed, m, e, rounds, per[(m, e)])
        console.print(f"  rounds: trial {trial + 1}/{trials} done")
    flower_runs = {}
    if with_flower:
        for m, e in ROUND_CONFIGS:
            if e == 1 or m == "mlp":
                flower_runs[(m, e)] = flower(m, e, rounds + 1)
    rows = []
    for m, e in ROUND_CONFIGS:
        batched, loop = spread(per[(m, e)]["batched"]), spread(per[(m, e)]["loop"])
        flops = setup.round_flops(m, e)
        fl = flower_runs.get((m, e))
        rows.append({
            "model": m, "epochs": e, "batched": batched, "loop": loop, "loop_threads": per[(m, e)]["loop_threads"],
            "flower": fl or ("skipped" if not with_flower else "not run"),
            "loop_over_batched": loop["median"] / batched["median"],
            "flower_over_batched": fl["steady_s_per_round"] / batched["median"] if fl else None,
            "gflops": flops / batched["median"] / 1e9,
            "fraction_of_limit": flops / batched["median"] / 1e9 / limit,
            "mflop_per_sample": flops / (10 * 600 * e) / 1e6,
        })
    return rows


def cnn_section(fed, trials: int, rounds: int, limit: float) -> dict:
    per = {"batched": [], "loop": [], "loop_threads": []}
    for _ in range(trials):
        timed_trials(fed, "cnn", 1, rounds, per)
    batched, loop = spread(per["batched"]), spread(per["loop"])
    flops = setup.round_flops("cnn", 1)
    return {"batched": batched, "loop": loop, "loop_threads": per["loop_threads"], "loop_over_batched": loop["median"] / batched["median"],
            "gflops": flops / batched["median"] / 1e9, "fraction_of_limit": flops / batched["median"] / 1e9 / limit}


def job_section(with_flower: bool, threads: int, trials: int) -> dict:
    """The 15-round job `trials` times, fedbridge's and Flower's alternated; wall times' median and spread."""
    walls: dict[str, list[float]] = {"fedbridge": [], "flower": []}
    accuracy, flower_runs = 0.0, []
    for _ in range(trials):
        out, wall = run_json([sys.executable, "-m", "benchmarks.job", "--model", "2nn", "--rounds", "15", "--threads", str(threads)])
        walls["fedbridge"].append(wall)
        accuracy = out["test_accuracy"]
        if with_flower:
            flower_runs.append(flower("2nn", 1, 15))
            walls["flower"].append(flower_runs[-1]["job_s"])
    result = {"fedbridge": {"job_s": spread(walls["fedbridge"]), "test_accuracy": accuracy}}
    if with_flower:
        result["flower"] = {"job_s": spread(walls["flower"]), "first_round_s": spread([f["first_round_s"] for f in flower_runs])}
        result["flower_over_fedbridge"] = result["flower"]["job_s"]["median"] / result["fedbridge"]["job_s"]["median"]
    else:
        result["flower"] = "skipped"
    return result


def scaling_section(clients: list[int], rounds: int, threads: int) -> list[dict]:
    rows = []
    for n in clients:
        out, _ = run_json([sys.executable, "-m", "benchmarks.job", "--model", "2nn", "--clients", str(n),
                           "--fraction", "1", "--rounds", str(rounds + 1), "--threads", str(threads)])
        rows.append({"clients_per_round": n, "s_per_round": statistics.median(out["round_seconds"][1:]),
                     "peak_rss_mb": out["peak_rss_mb"]})
    return rows


def seed_section(trials: int) -> dict:
    """`fedbridge run configs/seed.toml` end to end, `trials` times: wall times' median and spread."""
    walls = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            done = subprocess.run([str(Path(sys.executable).parent / "fedbridge"), "run", "configs/seed.toml", "--out", f"{tmp}/run"],
                                  capture_output=True, text=True, cwd=ROOT)
            walls.append(time.perf_counter() - began)
        if done.returncode:
            return {"error": done.stderr[-2000:]}
    return {"seconds": spread(walls)}


def fmt(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def show(report: dict, console: Console) -> None:
    y = report.get("yardstick")
    if y:
        t = Table(title=f"Dense float32 candidates, GFLOP/s: best (min-median over {y['windows']} windows)")
        for col in ("kernel", "best", "min", "median"):
            t.add_column(col)
        for name, k in y["kernels"].items():
            t.add_row(name, f"{k['best']:.0f}", f"{k['min']:.0f}", f"{k['median']:.0f}")
        console.print(t)
        console.print(f"Dense float32 limit: {y['limit_gflops']:.0f} GFLOP/s ({y['limit_kernel']}; its windows "
                      f"{y['limit_spread'][0]:.0f}-{y['limit_spread'][1]:.0f})")
    if "rounds" in report:
        t = Table(title="McMahan round, s/round: median (min-max over trials)")
        for col in ("model", "E", "batched", "loop", "Flower", "x loop", "x Flower", "GFLOP/s", "of limit"):
            t.add_column(col)
        for r in report["rounds"]:
            fl = r["flower"]
            t.add_row(r["model"], str(r["epochs"]), fmt(r["batched"]), fmt(r["loop"]),
                      f"{fl['steady_s_per_round']:.3f}" if isinstance(fl, dict) else fl,
                      f"{r['loop_over_batched']:.1f}", f"{r['flower_over_batched']:.1f}" if r["flower_over_batched"] else "-",
                      f"{r['gflops']:.0f}", f"{100 * r['fraction_of_limit']:.0f}%")
        console.print(t)
    if "cnn" in report:
        c = report["cnn"]
        console.print(f"CNN round E=1: batched {fmt(c['batched'])}, loop {fmt(c['loop'])} s/round: "
                      f"x{c['loop_over_batched']:.2f}, {c['gflops']:.0f} GFLOP/s = {100 * c['fraction_of_limit']:.0f}% of limit")
    if "job" in report:
        j = report["job"]
        fl = j["flower"]
        console.print(f"15-round 2NN job, process start to test accuracy, s: fedbridge {fmt(j['fedbridge']['job_s'], 1)}; "
                      + (f"Flower {fmt(fl['job_s'], 1)} (first round {fmt(fl['first_round_s'], 1)}): x{j['flower_over_fedbridge']:.1f}"
                         if isinstance(fl, dict) else "Flower skipped"))
    if "scaling" in report:
        t = Table(title="Scaling (2NN, E=1, all clients every round)")
        for col in ("clients/round", "s/round", "s per 100 clients", "peak RSS MB"):
            t.add_column(col)
        for r in report["scaling"]:
            t.add_row(str(r["clients_per_round"]), f"{r['s_per_round']:.3f}",
                      f"{100 * r['s_per_round'] / r['clients_per_round']:.3f}", f"{r['peak_rss_mb']:.0f}")
        console.print(t)
    if "bound" in report:
        bound.show_rows(report["bound"], console)
    if "generic" in report:
        generic.show_rows(report["generic"], console)
    if "seed" in report:
        s = report["seed"]
        console.print("seed study end to end, s: " + (fmt(s["seconds"], 1) if "seconds" in s else f"failed: {s['error']}"))
    if "scale10k" in report:
        t = Table(title="10,000 clients vs 100 (2NN, 100 per round, 5+1 MNIST images a client), s/round: median (min-max)")
        for col in ("strategy", "10,000", "100", "ratio (<= 1.2)", "CPU ratio", "without eval: 10,000 / 100",
                    "eval s", "peak RSS MB (<= 4096)", "state on disk MB", "partition + federation s"):
            t.add_column(col)
        for r in report["scale10k"]:
            t.add_row(r["strategy"], fmt(r["s_per_round_10k"]), fmt(r["s_per_round_100"]), f"{r['ratio']:.2f}",
                      f"{r['cpu_ratio']:.2f}", f"{fmt(r['training_s_per_round_10k'])} / {fmt(r['training_s_per_round_100'])}"
                      f" = {r['training_ratio']:.2f}", f"{r['eval_s_10k']:.2f} / {r['eval_s_100']:.2f}",
                      f"{r['peak_rss_mb_10k']:.0f} (100: {r['peak_rss_mb_100']:.0f})",
                      f"{r['state_on_disk_mb']:.0f}", f"{r['partition_s']:.1f} + {r['federation_s']:.1f}")
        console.print(t)
    load = report["machine"].get("load")
    if load and load["busy"]:
        console.print(f"[yellow]warning:[/yellow] the machine was busy: load average up to {load['load_max']:.1f} "
                      f"(median {load['load_median']:.1f}) on {load['cores']} cores; these figures are not those of a quiet machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 3 rounds, scaling to 100 clients: a smoke run")
    parser.add_argument("--trials", type=positive_int, default=3)
    parser.add_argument("--rounds", type=positive_int, default=15, help="timed rounds per trial (the loop at E=5 runs a third)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("speed.json"))
    args = parser.parse_args()
    results_file(args.json)
    console = Console(width=max(Console().width, 140))
    sections = [s.strip() for s in args.only.split(",")]
    if unknown := set(sections) - set(SECTIONS) - set(EXTRA_SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    trials, rounds = (2, 3) if args.quick else (args.trials, args.rounds)
    torch.set_num_threads(args.threads)
    watch = LoadWatch()
    with_flower = not args.no_flower and importlib.util.find_spec("flwr") is not None
    if not with_flower:
        console.print("Flower simulation: skipped (" + ("--no-flower" if args.no_flower else "flwr not installed: pip install -e '.[flower]'") + ")")
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__, "device": generic.device(),
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "settings": {"trials": trials, "rounds": rounds, "lr": LR},
    }
    limit = None
    if {"yardstick", "rounds", "cnn", "bound"} & set(sections):
        report["yardstick"] = yardstick()
        limit = report["yardstick"]["limit_gflops"]
    fed = setup.federation(setup.load_mnist()) if {"rounds", "cnn", "bound", "generic"} & set(sections) else None
    if "rounds" in sections:
        report["rounds"] = rounds_section(fed, trials, rounds, with_flower, limit, console)
    if "cnn" in sections:
        report["cnn"] = cnn_section(fed, trials, max(1, rounds // 5), limit)
    if "bound" in sections:
        report["bound"] = bound.section(fed, bound.CASES, max(trials, 5), report["yardstick"]["limit_kernel"])
    if "job" in sections:
        report["job"] = job_section(with_flower, args.threads, trials)
    if "scaling" in sections:
        report["scaling"] = scaling_section([10, 100] if args.quick else [10, 100, 1000], 2 if args.quick else 3, args.threads)
    if "seed" in sections:
        report["seed"] = seed_section(trials)
    if "scale10k" in sections:
        # at most 5 timed rounds: each of the four processes first builds its federation (~10 s)
        report["scale10k"] = scale10k.section(trials, min(rounds, 5), args.threads)
    if "generic" in sections:
        report["generic"] = generic.generic_section(fed, trials, rounds, generic.CASES)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["machine"]["load"] = watch.stop()
    show(report, console)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    entry(main)
