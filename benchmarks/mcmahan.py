"""Reproduce McMahan et al. 2017 (FedAvg): rounds until the global model first reaches a test accuracy.

    python -m benchmarks.mcmahan [--only 2nn-iid,2nn-noniid,cnn-iid] [--json PATH]

MNIST, 100 clients, C = 0.1, B = 10. The 2NN with E = 1 on IID clients (600 images each) and on
pathological non-IID clients (200 label-sorted shards of 300, 2 per client), to 97%; the CNN with
E = 5 on IID clients, to 99%. As in the paper, the learning rate is the best of a small grid
(steps of 10^(1/3)); a grid point stops as soon as it cannot beat the best one so far.
Paper (Table 2 / Table 4): 2NN 87 rounds IID, 664 non-IID; CNN 20 rounds IID.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks import entry, mcmahan_setup as setup, non_negative_int, positive_int, results_file
from fedbridge.local import Recipe, local_update
from fedbridge.rounds import initial_model


@dataclass(frozen=True)
class Setting:
    name: str
    model: str
    iid: bool
    epochs: int
    target: float
    paper_rounds: int
    max_rounds: int
    lrs: tuple[float, ...]


SETTINGS = {
    s.name: s
    for s in [
        Setting("2nn-iid", "2nn", True, 1, 0.97, 87, 400, (0.0464, 0.1, 0.215)),
        Setting("2nn-noniid", "2nn", False, 1, 0.97, 664, 1500, (0.0464, 0.1, 0.215)),
        Setting("cnn-iid", "cnn", True, 5, 0.99, 20, 100, (0.1,)),
    ]
}


def rounds_to_target(setting: Setting, fed: setup.McMahan, lr: float, cap: int, seed: int) -> tuple[int | None, list[float]]:
    """The first round whose global model reaches the target on the 10,000 test images (None if
    not within `cap` rounds), and the accuracy after every round."""
    model = setup.model_for(setting.model)
    params = initial_model(model, seed)
    recipe = Recipe("sgd", lr, 10, setting.epochs)
    curve = []
    for r in range(1, cap + 1):
        params = setup.fedavg_round(local_update, model, params, fed, recipe, 0.1, seed, r)
        curve.append(setup.test_accuracy(model, params, fed))
        if curve[-1] >= setting.target:
            return r, curve
    return None, curve


def run(setting: Setting, mnist, seed: int, console: Console) -> dict:
    fed = setup.federation(mnist, iid=setting.iid, seed=seed)
    best, tried = None, []
    for lr in setting.lrs:
        began = time.perf_counter()
        cap = min(setting.max_rounds, best["rounds"] - 1) if best else setting.max_rounds
        rounds, curve = rounds_to_target(setting, fed, lr, cap, seed)
        tried.append({"lr": lr, "rounds": rounds, "cap": cap, "final_accuracy": curve[-1] if curve else None,
                      "seconds": time.perf_counter() - began})
        console.print(f"  {setting.name} lr={lr}: " + (f"{rounds} rounds" if rounds else f"not within {cap} rounds")
                      + f" ({tried[-1]['seconds']:.0f} s)")
        if rounds and (best is None or rounds < best["rounds"]):
            best = {"lr": lr, "rounds": rounds}
    return {"setting": setting.name, "target": setting.target, "paper_rounds": setting.paper_rounds,
            "rounds": best["rounds"] if best else None, "lr": best["lr"] if best else None,
            "ratio_to_paper": best["rounds"] / setting.paper_rounds if best else None, "grid": tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=Path("mcmahan.json"))
    args = parser.parse_args()
    results_file(args.json)
    names = [s.strip() for s in args.only.split(",")]
    if unknown := set(names) - set(SETTINGS):
        parser.error(f"--only: unknown setting(s) {', '.join(sorted(unknown))}; choose from {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    console = Console()
    mnist = setup.load_mnist()
    results = [run(SETTINGS[n], mnist, args.seed, console) for n in names]
    table = Table(title="McMahan et al. 2017 on fedbridge: rounds to target test accuracy")
    for col in ("setting", "target", "lr", "ours", "paper", "ours / paper"):
        table.add_column(col)
    for r in results:
        table.add_row(r["setting"], f"{100 * r['target']:.0f}%", str(r["lr"]), str(r["rounds"] or "not reached"),
                      str(r["paper_rounds"]), f"{r['ratio_to_paper']:.2f}" if r["ratio_to_paper"] else "-")
    console.print(table)
    args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    entry(main)
