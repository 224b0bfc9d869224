import math

import pytest
import torch

from fedbridge import detection
from fedbridge.strategies import diagnostics


def test_roc_auc_of_a_perfect_and_a_useless_score():
    noisy = [False, False, True, True]
    assert detection.roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), noisy) == 1.0
    assert detection.roc_auc(torch.tensor([0.2, 0.8, 0.2, 0.8]), noisy) == 0.5


def test_roc_auc_counts_ties_half_by_hand():
    # noisy 0.4 and 0.5 against clean 0.1 and 0.5: pairs 1 + 0 + 1 + 0.5 of 4
    assert detection.roc_auc(torch.tensor([0.1, 0.4, 0.5, 0.5]), [False, True, False, True]) == 0.625


def test_roc_auc_equals_scikit_learn():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    for n in (3, 10, 200):
        scores = torch.randint(0, 6, (n,), generator=g).float()  # many ties
        noisy = (torch.rand(n, generator=g) < 0.3).tolist()
        noisy[0], noisy[1] = True, False
        assert detection.roc_auc(scores, noisy) == pytest.approx(roc_auc_score(noisy, scores.tolist()), abs=1e-12)


def test_roc_auc_skips_unsampled_clients_and_needs_both_kinds():
    noisy = [False, True, True]
    assert detection.roc_auc(torch.tensor([0.1, math.nan, 0.5]), noisy) == 1.0
    assert detection.roc_auc(torch.tensor([math.nan, 0.3, 0.5]), noisy) is None


def test_reliable_from_is_the_round_after_which_auc_stays_high():
    assert detection.reliable_from([0.5, 0.95, 0.8, 0.92, 0.95]) == 4
    assert detection.reliable_from([0.95, 0.5]) is None


def test_scores_flag_the_planted_outlier():
    updates = {"w": torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [-3.0, 3.0]])}
    scores = diagnostics.client_scores(updates, torch.tensor([0.3, 0.2, 0.3, 2.0]))
    for name in diagnostics.SCORES:
        assert scores[name].argmax().item() == 3, name


def test_auc_by_round_reads_diagnostics_records():
    # round 1: client 3 (noisy) scores highest of all three; round 2: only clients 1 and 2 were sampled
    records = [{"seed": 0, "method": "fedavg", "round": r, "client": c, "scores": {"loss": v}}
               for r, c, v in [(1, 1, 0.1), (1, 2, 0.2), (1, 3, 0.9), (2, 1, 0.5), (2, 2, 0.4)]]
    assert detection.auc_by_round(records, [False, False, True], rounds=2) == {"loss": [1.0, None]}


def test_summary_averages_seeds_per_round_and_skips_rounds_a_seed_could_not_score():
    found = detection.summary([[0.5, 1.0, 0.9], [0.7, None, 1.0]])
    assert found["auc_by_round"] == pytest.approx([0.6, 1.0, 0.95])
    assert (found["first"], found["last"], found["reliable_from"]) == (pytest.approx(0.6), pytest.approx(0.95), 2)
