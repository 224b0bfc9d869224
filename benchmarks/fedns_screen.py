"""FedNS's round-1 screen under label skew, and two label-aware variants of its score (issue 19).

Under Dirichlet(0.5) FedNS's round-1 verdicts are barely better than chance (README, "FedNS
reproduced"): the gradient-norm score follows each client's label mix. This measures, on the
benchmark's federation (benchmarks.fedns), how many of the 20 clients the 2-means split gets right
after one round of local training, with the score as FedNS computes it and two label-aware ones:

- `per-class`: each client's score per class (its samples of that class alone), over the median of
  that class's scores across the clients holding at least 20 of it; the client's score is the mean
  log ratio, weighted by its class counts (a client compared with others on the same classes);
- `entropy residual`: the residual of log score after a least-squares fit on the entropy of the
  client's label distribution across the round's clients (what its label mix predicts, removed).

    python -m benchmarks.fedns_screen --seeds 5 --partitions non-iid
    python -m benchmarks.fedns_screen --seeds 3 --partitions non-iid --local-epochs 5
"""

import argparse
import statistics
from unittest.mock import patch

import torch

from benchmarks import entry, fedns, positive_int
from fedbridge import gradnorm
from fedbridge.data.datasets import load_dataset
from fedbridge.engines import simulation
from fedbridge.federation import build_federation
from fedbridge.strategies.noise_screen import two_means_split

MIN_CLASS = 20  # samples of a class a client needs for its per-class score to count


def right(score: torch.Tensor, truth: torch.Tensor) -> int:
    """Clients the 2-means split of `score` gets right (the low cluster noisy), as FedNS splits."""
    return int(((score < two_means_split(score)) == truth).sum())


def per_class(model, params, images, labels, rows, classes: int, batch_size: int) -> torch.Tensor:
    scores, counts = torch.zeros(len(rows), classes), torch.zeros(len(rows), classes)
    for k, own in enumerate(rows):
        mine = {n: p[k : k + 1] for n, p in params.items()}
        for c in range(classes):
            of_c = own[labels[own] == c]
            counts[k, c] = len(of_c)
            if len(of_c):
                scores[k, c] = gradnorm.scores(model, mine, images, [of_c], batch_size)[0]
    held = counts >= MIN_CLASS
    reference = torch.stack([scores[held[:, c], c].median() if held[:, c].any() else torch.tensor(1.0)
                             for c in range(classes)])
    weights = counts * held
    return ((scores.clamp_min(1e-12) / reference).log() * weights).sum(1) / weights.sum(1).clamp_min(1)


def entropy_residual(score: torch.Tensor, labels: torch.Tensor, rows, classes: int) -> torch.Tensor:
    mix = torch.stack([torch.bincount(labels[r], minlength=classes).float() for r in rows])
    mix = mix / mix.sum(1, keepdim=True)
    entropy = -(mix.clamp_min(1e-12).log() * mix).sum(1)
    fit = torch.stack([torch.ones_like(entropy), entropy], 1)
    beta = torch.linalg.lstsq(fit, score.log()[:, None]).solution
    return score.log() - (fit @ beta)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=positive_int, default=5)
    parser.add_argument("--partitions", nargs="+", default=["non-iid"], choices=list(fedns.PARTITIONS))
    parser.add_argument("--local-epochs", type=positive_int, default=1)
    parser.add_argument("--noise", default="ours", choices=list(fedns.NOISE))
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared
    run = argparse.Namespace(noise=args.noise, model="mlp", lr=0.1, batch_size=64, rounds=1, local_epochs=args.local_epochs)
    data = load_dataset(fedns.DATASET, args.data_dir)
    for partition in args.partitions:
        found: dict[str, list[int]] = {"fedns": [], "per-class": [], "entropy residual": []}
        for seed in range(args.seeds):
            exp = fedns.experiment(partition, "fedavg + fedns", run)
            federation = build_federation(data, exp, seed)
            truth = torch.tensor([c.profile != "clean" for c in federation.clients])
            seen: dict = {}

            def scores(model, params, images, rows, batch_size):
                seen.update(model=model, params=params, rows=rows)
                seen["score"] = gradnorm_scores(model, params, images, rows, batch_size)
                return seen["score"]

            gradnorm_scores = gradnorm.scores
            with patch.object(gradnorm, "scores", scores):
                simulation.train(exp.method("fedavg"), federation, exp, seed)
            labels, classes = federation.train_labels, federation.num_classes
            found["fedns"].append(right(seen["score"], truth))
            found["per-class"].append(right(per_class(seen["model"], seen["params"], federation.train_images, labels,
                                                      seen["rows"], classes, run.batch_size), truth))
            found["entropy residual"].append(right(entropy_residual(seen["score"], labels, seen["rows"], classes), truth))
            print(f"{partition} seed {seed}: " + ", ".join(f"{k} {v[-1]}/20" for k, v in found.items()), flush=True)
        print(f"{partition}, {args.local_epochs} local epoch(s), round-1 verdicts right of 20 (mean, min-max over "
              f"{args.seeds} seeds): " + "; ".join(f"{k} {statistics.fmean(v):.1f} ({min(v)}-{max(v)})" for k, v in found.items()))


if __name__ == "__main__":
    entry(main)
