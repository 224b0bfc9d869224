"""One FedAvg job on the McMahan federation with fedbridge's engine, as its own process.

The speed benchmark starts it to time a whole job from process start to finished metrics, and to
measure time per round and peak memory as the clients per round grow. Prints one JSON line.

    python -m benchmarks.job --model 2nn --epochs 1 --rounds 15
    python -m benchmarks.job --model 2nn --clients 1000 --fraction 1 --rounds 3
"""

import argparse
import json
import resource
import time

import torch

from benchmarks import entry, fraction, mcmahan_setup as setup, positive_int
from fedbridge.local import Recipe, local_update
from fedbridge.rounds import initial_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    setup.add_job_arguments(parser)
    parser.add_argument("--clients", type=positive_int, default=100)
    parser.add_argument("--fraction", type=fraction, default=0.1)
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fed = setup.federation(setup.load_mnist(), n_clients=args.clients)
    model = setup.model_for(args.model)
    recipe = Recipe("sgd", args.lr, 10, args.epochs)
    params = initial_model(model, 0)
    seconds = []
    for r in range(1, args.rounds + 1):
        began = time.perf_counter()
        params = setup.fedavg_round(local_update, model, params, fed, recipe, args.fraction, 0, r)
        seconds.append(time.perf_counter() - began)
    print(json.dumps({
        "round_seconds": seconds,
        "test_accuracy": setup.test_accuracy(model, params, fed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    entry(main)
