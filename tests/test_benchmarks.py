"""The benchmarks' own error handling (the benchmarks themselves run outside the test run)."""

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))  # the benchmarks package sits beside src/, not installed

from benchmarks import bound, entry, fedns, flower_round, job, mcmahan, positive_int, results_file, speed, strategies  # noqa: E402
from fedbridge.errors import DataError, FedbridgeError  # noqa: E402


def test_entry_prints_fedbridge_errors_and_exits_with_their_code(capsys):
    def main():
        raise DataError("MNIST not found; set FEDBRIDGE_DATA")

    with pytest.raises(SystemExit) as exited:
        entry(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: MNIST not found; set FEDBRIDGE_DATA\n"


def test_results_file_makes_its_folder_and_keeps_what_is_there(tmp_path):
    made = results_file(tmp_path / "new" / "speed.json")
    assert made.parent.is_dir() and not made.exists()  # a run that fails later leaves no empty file
    kept = tmp_path / "old.json"
    kept.write_text("{}")
    results_file(kept)
    assert kept.read_text() == "{}"


def test_an_unwritable_results_file_is_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FedbridgeError, match=r"cannot write the results file .*file/speed.json.*--json"):
        results_file(blocker / "speed.json")
    with pytest.raises(FedbridgeError, match=r"cannot write the results file .*--json"):
        results_file(tmp_path)  # a folder, not a file


# --- bad input: a message naming the flag and a non-zero exit, never a traceback ---------------------

def run_main(module, monkeypatch, *args) -> int:
    """A benchmark's `python -m` entry point with `args`; its exit code."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        entry(module.main)
    return exited.value.code


@pytest.mark.parametrize("module, flag, value", [
    (speed, "--trials", "0"), (speed, "--trials", "-1"), (speed, "--rounds", "0"), (speed, "--threads", "0"),
    (mcmahan, "--seed", "-1"), (mcmahan, "--threads", "0"),
    (job, "--clients", "0"), (job, "--epochs", "0"), (job, "--fraction", "-5"), (job, "--fraction", "1.5"),
    (job, "--lr", "-1"), (job, "--lr", "inf"), (job, "--rounds", "-3"), (job, "--threads", "-1"),
    (flower_round, "--rounds", "0"), (flower_round, "--actors", "0"),
    (strategies, "--seeds", "0"), (strategies, "--rounds", "0"), (strategies, "--lr", "nan"), (strategies, "--batch-size", "0"),
    (bound, "--repeats", "0"),
])
def test_out_of_range_options_are_refused_at_parse_time(module, flag, value, monkeypatch, capsys):
    assert run_main(module, monkeypatch, flag, value) == 2
    assert f"error: argument {flag}: expected " in capsys.readouterr().err


def test_counts_take_whole_numbers_of_one_or_more():
    assert positive_int("3") == 3
    for bad in ("0", "2.5", "three"):
        with pytest.raises(argparse.ArgumentTypeError, match="a whole number of 1 or more"):
            positive_int(bad)


def test_flower_round_without_flower_says_how_to_install_it(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "flwr" or m.startswith(("flwr.", "benchmarks.flower_apps"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flwr", None)  # what `import flwr` meets when Flower is not installed
    assert run_main(flower_round, monkeypatch, "--rounds", "1") == 1
    assert "install it with: pip install -e '.[flower]'" in capsys.readouterr().err


def results_line(dataset="digits", seed=0, method="local", rounds=1, lr=0.1, batch_size=64) -> str:
    return json.dumps({"dataset": dataset, "partition": "iid", "seed": seed, "method": method,
                       "rounds": rounds, "lr": lr, "batch_size": batch_size}) + "\n"


# each case names a file `--out`: a folder holding it, or its contents
@pytest.mark.parametrize("out, make, expected", [
    ("file/x.jsonl", lambda p: p.parent.write_text(""), r"cannot write the results file .*file/x.jsonl .*--out"),
    ("dir", lambda p: p.mkdir(), r"cannot write the results file .*dir \(it is a folder\); pass a writable path with --out"),
    ("x.jsonl", lambda p: p.write_text(results_line(rounds=2)),
     r"--out .*x.jsonl holds results run with rounds 2, lr 0.1, batch size 64, "
     r"not this run's rounds 1, lr 0.1, batch size 64: choose another --out, or the same settings"),
    ("x.jsonl", lambda p: p.write_text(results_line() + "{truncated\n"), r"--out: .*x.jsonl line 2 is not a results line"),
])
def test_strategies_refuses_an_unusable_out_before_loading_data(out, make, expected, tmp_path, monkeypatch, capsys):
    make(tmp_path / out)
    # loading `nope` would fail with another message: the --out was checked first
    assert run_main(strategies, monkeypatch, "--out", tmp_path / out, "--rounds", 1, "--datasets", "nope") == 1
    assert re.search(expected, capsys.readouterr().err)


def test_strategies_table_refuses_a_missing_file_and_mixed_settings(tmp_path, monkeypatch, capsys):
    assert run_main(strategies, monkeypatch, "--table", tmp_path / "missing.jsonl") == 1
    assert "--table: cannot read" in capsys.readouterr().err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(results_line(method="local") + results_line(method="fedavg", lr=0.05))
    assert run_main(strategies, monkeypatch, "--table", mixed) == 1
    err = capsys.readouterr().err
    assert "mix results run with rounds 1, lr 0.05, batch size 64; rounds 1, lr 0.1, batch size 64" in err
    assert "summarise one experiment at a time" in err


@pytest.fixture
def threads():
    """strategies.run sets one thread for its process: give the test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_strategies_records_its_settings_and_resumes_only_the_same_experiment(tmp_path, monkeypatch, capsys, threads):
    out = tmp_path / "s.jsonl"
    tiny = ["--datasets", "digits", "--partitions", "iid", "--methods", "local", "--seeds", 1, "--rounds", 1, "--out", out]
    monkeypatch.setattr(sys, "argv", ["strategies", *map(str, tiny)])
    strategies.main()
    [line] = [json.loads(x) for x in out.read_text().splitlines()]
    assert (line["rounds"], line["lr"], line["batch_size"]) == (1, 0.1, 64)
    strategies.main()  # the same settings: resumed, nothing left to run
    assert out.read_text().count("\n") == 1
    assert run_main(strategies, monkeypatch, *tiny, "--batch-size", 32) == 1
    assert "holds results run with rounds 1, lr 0.1, batch size 64" in capsys.readouterr().err
    assert out.read_text().count("\n") == 1
    assert "(rounds 1, lr 0.1, batch size 64, seeds 0;" in strategies.table([out])


def test_bound_records_the_dense_calls_and_counts_their_flops_by_hand():
    # a [2, 3] x [3, 4] matmul is 2 * 2 * 3 * 4 = 48 FLOPs, a batch of 5 [4, 6] x [6, 7] is 5 * 2 * 4 * 6 * 7 = 1,680;
    # the ReLU between them is not a dense call, and vmap's batched matmul is recorded as what runs
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    with bound.Recorder() as recorder:
        torch.mm(a, b).relu()
        torch.bmm(torch.randn(5, 4, 6), torch.randn(5, 6, 7))
        torch.vmap(torch.mm)(torch.randn(5, 4, 6), torch.randn(5, 6, 7))
    assert [str(f.overloadpacket) for f, _, _ in recorder.calls] == ["aten.mm", "aten.bmm", "aten.bmm"]
    assert recorder.calls[0][1][0] == bound.Operand((2, 3), (3, 1), torch.float32)
    calls, flops = bound._materialised(recorder.calls)
    assert flops == 48 + 1680 + 1680
    assert bound.replay_seconds(calls, workers=1) > 0
    assert bound.replay_seconds(calls, workers=2) > 0


def test_bound_refuses_a_case_it_cannot_run(monkeypatch, capsys):
    assert run_main(bound, monkeypatch, "--cases", "mlp:1:kernels,resnet:1:kernels") == 2
    assert "--cases: 'resnet:1:kernels' is not model:epochs:path" in capsys.readouterr().err


def test_per_client_verdict_by_hand():
    # two seeds; client 1 gains +2 and +4 points, client 2 loses 10 and 12: its interval, -11 ± 12.7 x 1,
    # is [-23.7, +1.7], so it covers zero and no client is significantly worse off; with -10 and -10.2 it does not
    local = {0: {"own": {"1": 0.5, "2": 0.5}}, 1: {"own": {"1": 0.5, "2": 0.5}}}
    runs = [{"seed": 0, "own": {"1": 0.52, "2": 0.40}}, {"seed": 1, "own": {"1": 0.54, "2": 0.38}}]
    worst, worse_off = strategies.per_client_verdict(runs, local)
    assert worst.startswith("-11.0 [-23.7, +1.7] (client 2)") and worse_off == 0
    runs[1]["own"]["2"] = 0.398
    assert strategies.per_client_verdict(runs, local)[1] == 1
    assert strategies.per_client_verdict(runs[:1], local)[1] == "– (one seed)"


def test_fedns_table_compares_with_the_paper(tmp_path):
    lines = [{"dataset": "fashion-mnist", "partition": "iid", "seed": s, "method": m, "rounds": 2, "lr": 0.1,
              "batch_size": 64, "clean": c + s / 100, "screen_correct": 20 if "fedns" in m else None}
             for s in (0, 1) for m, c in (("fedavg", 0.80), ("fedavg + fedns", 0.83))]
    path = tmp_path / "fedns.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = fedns.table([path])
    assert "| fedavg | 80.50 [74.15, 86.85] | 88.14 | -7.64 |" in text
    # paired by seed: +3 points in both seeds, no spread; the paper's +1.47
    assert "| FedNS helps fedavg: + fedns − fedavg | 3.00 [3.00, 3.00] | +1.47 |" in text
    assert "20–20 of 20 clients right" in text


def test_fedns_oracle_screen_takes_the_true_profiles_of_the_round_s_clients():
    from fedbridge.strategies.noise_screen import CLEAN, NOISY, UNKNOWN
    known = torch.full((3,), UNKNOWN)
    verdicts = fedns.oracle(torch.tensor([True, False, True]))
    after, threshold = verdicts(known, float("nan"), torch.tensor([0, 1]), torch.tensor([5.0, 1.0]))
    assert after.tolist() == [NOISY, CLEAN, UNKNOWN] and threshold != threshold  # the scores play no part
    assert known.tolist() == [UNKNOWN] * 3  # the state it was given is left alone


def test_fedns_refuses_to_resume_a_file_of_another_noise_or_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "f.jsonl"
    out.write_text(json.dumps({"dataset": "fashion-mnist", "partition": "iid", "seed": 0, "method": "fedavg",
                               "rounds": 1, "lr": 0.1, "batch_size": 64, "model": "mlp", "local_epochs": 1,
                               "noise": "ours", "screen": "kmeans"}) + "\n")
    assert run_main(fedns, monkeypatch, "--out", out, "--rounds", 1, "--noise", "paper", "--data-dir", tmp_path) == 1
    assert "noise ours, screen kmeans, not this run's rounds 1, lr 0.1, batch size 64, model mlp, local epochs 1, " \
           "noise paper" in capsys.readouterr().err


def test_fedns_screen_counts_verdicts_and_removes_what_the_label_mix_predicts():
    from benchmarks import fedns_screen
    # 2-means splits {1, 2} from {10, 11}: the low cluster is noisy
    assert fedns_screen.right(torch.tensor([1.0, 2.0, 10.0, 11.0]), torch.tensor([True, True, False, False])) == 4
    assert fedns_screen.right(torch.tensor([1.0, 2.0, 10.0, 11.0]), torch.tensor([False, True, False, False])) == 3
    # client 0 holds one class (entropy 0), client 1 two evenly (log 2), client 2 four (log 4); scores
    # exp(1 + entropy) are all the label mix predicts, so nothing is left of them
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 0, 1, 2, 3])
    rows = [torch.tensor([0, 1]), torch.tensor([4, 5]), torch.tensor([6, 7, 8, 9])]
    entropy = torch.tensor([0.0, math.log(2), math.log(4)])
    residual = fedns_screen.entropy_residual((1 + entropy).exp(), labels, rows, 4)
    assert residual.abs().max() < 1e-5
