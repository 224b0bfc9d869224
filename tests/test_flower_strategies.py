"""Client-side and personalized strategies on Flower: the deployment gives the simulation's global
weights and per-client accuracies, with each client's state on its node for SCAFFOLD and Ditto.

One cluster (a SuperLink and 2 SuperNodes on loopback) serves every strategy in turn; 2 unequal MNIST
clients, 2 rounds of plain SGD, so FedNova's step normalisation and FedProx's proximal term both
change the result (checked against FedAvg). The same protocol in process, FedBN and resume
included: test_flower_personal.py.
"""

import pytest

from conftest import CONFIGS

pytest.importorskip("flwr")
pytest.importorskip("psutil")

from fedbridge.data.datasets import load_dataset  # noqa: E402
from fedbridge.deploy import Faults, flower_train  # noqa: E402
from fedbridge.engines import simulation  # noqa: E402
from fedbridge.engines.flower.processes import cluster  # noqa: E402
from fedbridge.experiment import load_experiment  # noqa: E402
from fedbridge.federation import build_federation  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.integration, pytest.mark.slow]

SMALL = ["partition.sizes=[400,700]", "train.rounds=2", "baselines=[]", 'train.optimizer="sgd"', "train.lr=0.05",
         "train.batch_size=32"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def own_accuracies(records: list[dict]) -> dict:
    return {(r["round"], r["client"], r["test_set"]): r["accuracy"] for r in records if not r["test_set"].startswith("client:")}


def test_client_side_and_personalized_strategies_deployed_give_the_simulations_results(tmp_path, mnist_dir):
    mnist = load_dataset("mnist", mnist_dir)
    found = {}
    with cluster(2, tmp_path, data_dir=mnist_dir) as running:
        # FedRep (heads) and FedBN: the same protocol in process, test_flower_personal.py
        for strategy in ('{name="fedprox", mu=0.5}', '{name="fednova"}', '{name="scaffold"}', '{name="ditto", lam=0.5}'):
            exp, _ = load_experiment(CONFIGS / "seed.toml", [*SMALL, f"strategy={strategy}"])
            federation = build_federation(mnist, exp, exp.seed)
            method = exp.method(exp.strategy.name)
            deployed_records, simulated_records, simulated_states = [], [], []
            deployed = flower_train(running, Faults(round_timeout=120, connect_timeout=120))(
                method, federation, exp, exp.seed, lambda r, records, d, s: deployed_records.extend(records))
            simulation.train(method, federation, exp, exp.seed,
                             lambda r, records, d, s: (simulated_records.extend(records), simulated_states.append(s)))
            expected = found[exp.strategy.name] = simulated_states[-1].params  # the global model (FedRep's body)
            assert max_difference(deployed, expected) <= 1e-5, exp.strategy.name
            deployed, expected = own_accuracies(deployed_records), own_accuracies(simulated_records)
            assert deployed.keys() == expected.keys()
            assert max(abs(deployed[k] - expected[k]) for k in expected) <= 1e-5, exp.strategy.name
    exp, _ = load_experiment(CONFIGS / "seed.toml", SMALL)
    fedavg = simulation.train(exp.method("fedavg"), build_federation(mnist, exp, exp.seed), exp, exp.seed)
    assert max_difference(found["fedprox"], fedavg) > 1e-4 and max_difference(found["fednova"], fedavg) > 1e-4
