"""The generic training path (any nn.Module the kernels do not cover: fedbridge.local trains the
clients stacked under vmap, or one module each on the worker pool for convolutions, BatchNorm and
Dropout) timed side by side with the hand-written kernels and with the per-client reference loop.
`python -m benchmarks.speed --only generic` runs it.

  MLP and 2NN  the McMahan MNIST round (10 of 100 clients x 600 images, B=10, E=1, plain SGD)
  CIFAR CNN    cifar-cnn (LeNet-5) on 10 clients x 500 images of 3x32x32, B=10, E=1 (random pixels:
               the time of a step does not depend on them, and no CIFAR-10 copy is needed)

A model goes through the generic path when the kernels do not recognise it; here the built-ins are
wrapped in one more nn.Sequential for that (the same layers, the same initial draws).
"""

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from benchmarks import entry, mcmahan_setup as setup, positive_int
from fedbridge.local import Recipe, local_update
from fedbridge.models import build_model
from fedbridge.reference import reference_update
from fedbridge.rounds import initial_model

CIFAR_CLIENTS, CIFAR_SAMPLES = 10, 500
# what each model's round is timed with: the generic path against the kernels (where they apply) and
# the loop; on the CNN also vmap over the stacked clients, the alternative the generic path's one
# module per client was chosen against
CASES = {"mlp": ("kernels", "generic", "loop"), "2nn": ("kernels", "generic", "loop"), "cifar-cnn": ("generic", "vmap", "loop")}


def _all_at_once(model, start, images, labels, rows, recipe, generators):
    # a gradient hook makes the engine train every client of the round in one chunk: for a model
    # without batch statistics or randomness, vmap over the stacked clients
    return local_update(model, start, images, labels, rows, recipe, generators, adjust=lambda params, grads: grads)


# method -> (update, wrap the model so the kernels do not take it, threads: None = the default)
METHODS = {
    "kernels": (local_update, False, None),
    "generic": (local_update, True, None),
    "vmap": (_all_at_once, True, None),
    "loop": (reference_update, False, None),
    "loop-1-thread": (reference_update, False, 1),
}


def device() -> str:
    """Where the engine ran: this benchmark trains on the CPU (train.device = "cpu")."""
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cifar_federation() -> setup.McMahan:
    g = torch.Generator().manual_seed(0)
    n = CIFAR_CLIENTS * CIFAR_SAMPLES
    images, labels = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return setup.McMahan(images, labels, images[:10], labels[:10], list(torch.arange(n).split(CIFAR_SAMPLES)))


def time_method(method: str, fed: setup.McMahan, model_name: str, fraction: float, rounds: int) -> float:
    """Median s/round over `rounds` FedAvg rounds of `method`, after one warm-up round."""
    update, wrap, threads = METHODS[method]
    model = build_model(model_name, tuple(fed.images.shape[1:]), 10)
    model = nn.Sequential(model) if wrap else model
    params = initial_model(model, 0)
    recipe = Recipe("sgd", 0.05, 10, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    seconds = []
    try:
        for r in range(rounds + 1):
            began = time.perf_counter()
            params = setup.fedavg_round(update, model, params, fed, recipe, fraction, 0, r + 1)
            seconds.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(before)
    return statistics.median(seconds[1:])


def generic_section(mnist_fed: setup.McMahan, trials: int, rounds: int, methods: dict[str, tuple[str, ...]]) -> list[dict]:
    """Each model's methods interleaved within every trial; the loop keeps its faster thread setting."""
    cases = {"mlp": (mnist_fed, 0.1), "2nn": (mnist_fed, 0.1), "cifar-cnn": (cifar_federation(), 1.0)}
    per = {m: {name: [] for name in methods[m]} for m in methods}
    for _ in range(trials):
        for m, names in methods.items():
            fed, fraction = cases[m]
            for name in names:
                if name == "loop":
                    per[m][name].append(min(time_method(n, fed, m, fraction, rounds) for n in ("loop", "loop-1-thread")))
                else:
                    per[m][name].append(time_method(name, fed, m, fraction, rounds))
    rows = []
    for m, times in per.items():
        medians = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"model": m, "device": device(), "s_per_round": times,
                     "loop_over_generic": medians["loop"] / medians["generic"],
                     **({"generic_over_kernels": medians["generic"] / medians["kernels"]} if "kernels" in medians else {}),
                     **({"vmap_over_generic": medians["vmap"] / medians["generic"]} if "vmap" in medians else {})})
    return rows


def show_rows(rows: list[dict], console) -> None:
    for r in rows:
        t = r["s_per_round"]
        parts = ", ".join(f"{name} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for name, v in t.items())
        ratios = ", ".join(f"{k.replace('_over_', ' / ')} {v:.2f}" for k, v in r.items() if "_over_" in k)
        console.print(f"generic path, {r['model']} round E=1 on {r['device']}, s/round: {parts}; {ratios}")


def main() -> None:
    """python -m benchmarks.generic [--models mlp,2nn,cifar-cnn] [--methods kernels,generic,vmap,loop]
    [--trials N] [--rounds N] [--threads N]: each time as it is measured (the figures of
    docs/performance.md, "The generic path")."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,2nn,cifar-cnn")
    parser.add_argument("--methods", default="kernels,generic,vmap,loop")
    parser.add_argument("--trials", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mnist = setup.federation(setup.load_mnist())
    cases = {"mlp": (mnist, 0.1), "2nn": (mnist, 0.1), "cifar-cnn": (cifar_federation(), 1.0)}
    print(f"device: {device()}", flush=True)
    for trial in range(args.trials):
        for m in args.models.split(","):
            fed, fraction = cases[m]
            for name in args.methods.split(","):
                if not (m == "cifar-cnn" and name == "kernels"):  # LeNet-5's default path is not the kernels alone
                    print(trial, m, name, f"{time_method(name, fed, m, fraction, args.rounds):.3f}", flush=True)


if __name__ == "__main__":
    entry(main)
