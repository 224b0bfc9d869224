"""The McMahan round on Flower's simulation (Ray, one actor per CPU): the comparison for benchmarks.speed.

A Flower user's setup: flwr's own FedAvg on the server, a ClientApp per sampled client training a
plain nn.Module with torch.optim (fedbridge's reference loop with one client, so the same batch
order), 100 virtual SuperNodes. Run as its own process, it prints one JSON line: the time of every
round (between consecutive aggregations), the first round from the strategy's start, and the test
accuracy at the end; the caller measures the whole job from process start.

    python -m benchmarks.flower_round --model 2nn --epochs 1 --rounds 15
"""

import argparse
import json
from types import ModuleType

from benchmarks import entry, mcmahan_setup as setup, positive_int
from fedbridge.errors import FedbridgeError


def flower_apps() -> ModuleType:
    """The Flower side of this benchmark, imported only now so that a missing Flower is a message."""
    try:
        from benchmarks import flower_apps
    except ImportError as e:
        raise FedbridgeError(f"benchmarks.flower_round needs Flower ({e}); install it with: pip install -e '.[flower]'") from None
    return flower_apps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    setup.add_job_arguments(parser)
    parser.add_argument("--actors", type=positive_int, default=2)
    args = parser.parse_args()
    print(json.dumps(flower_apps().simulate(args.model, args.epochs, args.rounds, args.lr, args.actors)))


if __name__ == "__main__":
    entry(main)
