"""`fedbridge advise`: the verdict rule on hand-made gains, advise.json's shape, a real tiny run that
continues without retraining when run again, and every bad input refused before training."""

import json

import pytest
from rich.console import Console

from conftest import CONFIGS, invoke, stopping_after
from fedbridge import advise
from fedbridge.study import run_study

TINY = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=2"]


def test_join_with_the_candidate_whose_interval_is_above_zero():
    got = advise.verdict({"fedavg": [0.02, 0.03, 0.025], "ditto": [0.0, 0.01, -0.01]})
    assert got["verdict"] == "join" and got["best"] == "fedavg"
    assert got["gain"] == pytest.approx(0.025) and got["ci_low"] > 0 and got["n_seeds"] == 3
    # a higher mean whose interval covers zero does not beat one that is settled
    got = advise.verdict({"a": [0.10, -0.05, 0.12], "b": [0.02, 0.03, 0.025]})
    assert (got["verdict"], got["best"]) == ("join", "b")


def test_stay_alone_when_every_interval_is_below_zero():
    got = advise.verdict({"fedavg": [-0.05, -0.04, -0.06], "ditto": [-0.02, -0.03, -0.025]})
    assert got["verdict"] == "stay" and got["best"] == "ditto" and got["ci_high"] < 0 and "more_seeds" not in got


def test_undecided_says_how_many_more_seeds_the_spread_suggests():
    got = advise.verdict({"fedavg": [0.01, -0.01, 0.02], "ditto": [-0.05, -0.04, -0.06]})
    assert got["verdict"] == "undecided" and got["best"] == "fedavg"
    # by hand: mean 0.00667, s 0.015275, |mean|/s = 0.4364; t(0.975, 21)/sqrt(22) = 2.0796/4.6904 = 0.4434,
    # t(0.975, 22)/sqrt(23) = 2.0739/4.7958 = 0.4324: 23 seeds, 20 more than the 3 there are
    assert got["more_seeds"] == 20
    # t(0.975, 2) * s / sqrt(3) = 4.3027 * 0.015275 / 1.7321 = 0.03795
    assert got["ci_low"] == pytest.approx(0.00667 - 0.03795, abs=1e-4)
    assert advise.seeds_to_settle([0.01, -0.01, 0.0]) is None  # a zero mean never settles


def test_advise_trains_compares_and_continues(tmp_path):
    out = tmp_path / "advice"
    args = ["advise", CONFIGS / "seed.toml", *TINY, "--seeds", 2, "--strategies", "fedavg,fedprox", "--out", out]
    plan = advise.plan(CONFIGS / "seed.toml", TINY[1::2], ["fedavg", "fedprox"], 2)
    with pytest.raises(KeyboardInterrupt), advise.open_advice_dir(out, plan):  # fedprox stops after round 1
        run_study(plan.candidates["fedavg"], out / "runs" / "fedavg", None, Console(quiet=True), quiet=True)
        run_study(plan.candidates["fedprox"], out / "runs" / "fedprox", None, Console(quiet=True),
                  stopping_after("fedprox", 1), quiet=True)
    kept = (out / "runs/fedavg/summary.json").stat().st_mtime_ns

    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "fedavg: finished already" in first.output and "fedprox: resuming" in first.output
    rows = json.loads((out / "advise.json").read_text())
    assert [r["client"] for r in rows] == [1, 2] and rows[1]["profile"] == "gaussian(sigma=0.2)"
    for r in rows:
        assert {"client", "best", "gain", "ci_low", "ci_high", "n_seeds", "verdict", "profile"} <= r.keys()
        assert r["verdict"] in ("join", "stay", "undecided") and r["n_seeds"] == 2 and r["best"] in ("fedavg", "fedprox")
        assert r["ci_low"] <= r["gain"] <= r["ci_high"] and set(r["candidates"]) == {"fedavg", "fedprox"}
    assert "Does joining help each client" in first.output and "95% CI" in first.output
    # local is trained once, in the first candidate's run, and the others pair with it
    assert json.loads((out / "runs/fedavg/summary.json").read_text())["methods"] == ["local", "fedavg"]
    assert json.loads((out / "runs/fedprox/summary.json").read_text())["methods"] == ["fedprox"]
    assert (out / "runs/fedavg/summary.json").stat().st_mtime_ns == kept
    page = (out / "report.html").read_text()
    assert "Does joining help each client" in page and "--strategies fedavg,fedprox" in page

    summaries = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    again = invoke(*args)
    assert again.exit_code == 0 and again.output.count("finished already") == 2 and "training" not in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == summaries
    assert json.loads((out / "advise.json").read_text()) == rows
    report = invoke("report", out)
    assert report.exit_code == 0, report.output

    other = invoke("advise", CONFIGS / "seed.toml", *TINY, "--seeds", 3, "--strategies", "fedavg,fedprox", "--out", out)
    assert other.exit_code == 1 and "another command" in other.output


def test_default_candidates_skip_what_the_setup_refuses():
    plan = advise.plan(CONFIGS / "seed.toml", [], None, 3)  # seed.toml trains with Adam
    assert "scaffold" in plan.skipped and "plain SGD" in plan.skipped["scaffold"]
    assert list(plan.candidates) == ["fedavg", "ditto", "fedper", "finetune"]
    assert plan.candidates["fedavg"].baselines == ["local"] and plan.candidates["ditto"].baselines == []


@pytest.mark.parametrize("args, message", [
    (["--seeds", 1], "--seeds 1: a confidence interval over seeds needs at least 2"),
    (["--set", 'clients=[{profile="clean"}]', "--set", "partition.sizes=[300]"], "give at least 2"),
    (["--strategies", "fedavg,fedavgg"], "'fedavgg' unknown; choose from fedavg, fedavgm"),
    (["--strategies", "fedavg,custom"], "strategy.rule"),
    (["--strategies", "scaffold"], "--strategies scaffold: strategy.name = 'scaffold' is written for plain SGD"),
    (["--set", "seeds=4"], "--seeds N"),
])
def test_bad_input_is_refused_before_training(tmp_path, args, message):
    result = invoke("advise", CONFIGS / "seed.toml", *TINY, *args, "--out", tmp_path / "advice")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "advice").exists()
