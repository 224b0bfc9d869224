"""[privacy]: the accountant against independent computations, DP-FedAvg's clipping and noise
measured, DP-SGD's ghost norms against per-example autograd, resume and bad input."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from conftest import CONFIGS, invoke as run, stopping_after
from fedbridge import kernels, losses
from fedbridge.local import DpSgd, Recipe, client_generator, local_update
from fedbridge.privacy import accountant, dpfedavg
from fedbridge.privacy.accountant import Mechanism
from fedbridge.privacy.config import Privacy
from fedbridge.strategies.api import ClientUpdates
from fedbridge.strategies.fedavg import FEDAVG

pytest.importorskip("dp_accounting")

PLAIN = ["--set", "data.name=digits", "--set", "partition.sizes=[400,400,400]", "--set", "train.rounds=3",
         "--set", "train.batch_size=32", "--set", 'baselines=["local"]']
SMALL = PLAIN + ["--set", "privacy.level=\"client\"", "--set", "privacy.clip=1.0", "--set", "privacy.noise_multiplier=0.5"]


def three_clients(tmp_path):
    config = tmp_path / "three.toml"
    config.write_text((CONFIGS / "seed.toml").read_text() + '\n[[clients]]\nprofile = "clean"\n')
    return config


def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The Gaussian mechanism's exact ε (Balle & Wang 2018, Thm 8): δ(ε) = Φ(-εσ + 1/2σ) - e^ε Φ(-εσ - 1/2σ)."""
    def gap(eps):
        return stats.norm.cdf(-eps * sigma + 0.5 / sigma) - math.exp(eps) * stats.norm.cdf(-eps * sigma - 0.5 / sigma) - delta
    return optimize.brentq(gap, 1e-6, 100)


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_one_gaussian_release_matches_the_closed_form(sigma):
    everyone = Mechanism(population=10, sample=10, releases=1, fixed_size=True)
    exact = exact_gaussian_epsilon(sigma, 1e-5)
    pld = accountant.epsilon(sigma, everyone, 1, 1e-5, "pld")
    rdp = accountant.epsilon(sigma, everyone, 1, 1e-5, "rdp")
    assert exact <= pld <= 1.01 * exact  # PLD is tight (its grid rounds up)
    assert exact <= rdp <= 1.6 * exact  # RDP is an upper bound, looser for one release


def test_rdp_and_pld_agree_on_poisson_sampling_over_many_steps():
    # TF Privacy's MNIST tutorial: 60,000 examples, batch 256, σ = 1.1, 60 epochs; it reports ε = 2.92 (RDP)
    steps = Mechanism(60_000, 256, 60_000 // 256, fixed_size=False)
    rdp = accountant.epsilon(1.1, steps, 60, 1e-5, "rdp")
    pld = accountant.epsilon(1.1, steps, 60, 1e-5, "pld")
    assert pld <= rdp <= 1.25 * pld
    assert 2.4 < rdp < 3.0


@pytest.mark.parametrize("mech", [Mechanism(100, 10, 1, True), Mechanism(500, 32, 16, False)])
def test_rdp_scaled_from_one_round_equals_a_fresh_accountant(mech):
    import dp_accounting as dp

    relation = dp.NeighboringRelation.REPLACE_ONE if mech.fixed_size else dp.NeighboringRelation.ADD_OR_REMOVE_ONE
    fresh = dp.rdp.RdpAccountant(orders=accountant.ORDERS, neighboring_relation=relation)
    inner = dp.GaussianDpEvent(0.5 if mech.fixed_size else 1.0)  # σ = 1: the sum moves by 2C on replace-one
    event = (dp.SampledWithoutReplacementDpEvent(mech.population, mech.sample, inner) if mech.fixed_size
             else dp.PoissonSampledDpEvent(mech.sample / mech.population, inner))
    fresh.compose(event, 7 * mech.releases)
    assert accountant.epsilon(1.0, mech, 7, 1e-5, "rdp") == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)


def test_fixed_size_client_sampling_costs_more_than_its_poisson_approximation():
    fixed, poisson = Mechanism(100, 10, 1, True), Mechanism(100, 10, 1, False)
    assert accountant.epsilon(2.0, fixed, 20, 1e-5, "rdp") > accountant.epsilon(2.0, poisson, 20, 1e-5, "rdp")
    assert accountant.sampling(fixed, "rdp").startswith("fixed-size") and "Poisson" in accountant.sampling(fixed, "pld")


def test_calibrated_noise_is_the_smallest_that_reaches_the_target():
    mech = Mechanism(50, 50, 1, True)
    sigma = accountant.calibrate(4.0, mech, 10, 1e-5, "pld")
    assert accountant.epsilon(sigma, mech, 10, 1e-5, "pld") <= 4.0 < accountant.epsilon(sigma / 1.01, mech, 10, 1e-5, "pld")
    assert accountant.calibrate(1e-4, mech, 10, 1e-5, "pld") is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=6, max_size=6), st.floats(0.01, 10))
def test_every_clipped_update_is_within_the_bound(values, bound):
    updates = {"w": torch.tensor(values).view(3, 2), "b": torch.tensor(values[:3]).view(3, 1)}
    clipped, within = dpfedavg.clip(updates, bound)
    size = torch.cat([clipped["w"], clipped["b"]], 1).norm(dim=1)
    assert (size <= bound * (1 + 1e-5)).all()
    original = torch.cat([updates["w"], updates["b"]], 1).norm(dim=1)
    assert torch.equal(within, original <= bound)


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_the_noised_mean_update_has_std_sigma_c_over_m(mode):
    # clients that do not move: the released mean is the noise alone, which must have std σC/m
    m, sigma, c, d = 4, 1.5, 0.5, 4000
    privacy = Privacy(level="client", noise_multiplier=sigma, clip=c, mode=mode)
    ids = torch.arange(m)

    def train(start, adjust=None, epochs=None, copy=0):
        return ClientUpdates(ids, torch.tensor([10.0, 20, 30, 40]), start.copy(), torch.ones(m), torch.zeros(m))

    draws = []
    for seed in range(25):
        strategy = dpfedavg.wrap(FEDAVG, privacy, sigma, m, seed)
        state = strategy.init({"w": torch.zeros(1, d)}, m)
        new, _ = strategy.aggregate(state, strategy.local(state, ids, train))
        draws.append(new.params["w"].flatten())
    std = torch.cat(draws).std().item()
    assert abs(std - sigma * c / m) < 0.05 * sigma * c / m


def test_adaptive_clipping_moves_the_bound_toward_the_quantile():
    privacy = Privacy(level="client", noise_multiplier=1.0, clip=1.0, adaptive={"count_noise": 1e-6, "lr": 0.2})
    everyone_within = torch.ones(10, dtype=torch.bool)
    lower = dpfedavg.next_clip(privacy, 1.0, everyone_within, 10, 0, 1)
    assert lower == pytest.approx(math.exp(-0.2 * 0.5), rel=1e-4)  # all within: C shrinks
    assert dpfedavg.next_clip(privacy, 1.0, ~everyone_within, 10, 0, 1) == pytest.approx(math.exp(0.1), rel=1e-4)


def per_example_clipped_sum(params, layers, x, y, clip):
    """DP-SGD by torch.func: every example's gradient materialised, clipped and summed."""
    from torch.func import grad, vmap

    def loss(p, xi, yi):
        h = xi
        for i, name in enumerate(layers):
            h = h @ p[f"{name}.weight"].T + p[f"{name}.bias"]
            h = h.relu() if i < len(layers) - 1 else h
        return torch.nn.functional.cross_entropy(h.unsqueeze(0), yi.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    size = torch.cat([v.flatten(1) for v in g.values()], 1).norm(dim=1)
    scale = (clip / size).clamp(max=1)
    return {n: torch.einsum("b,b...->...", scale, v) for n, v in g.items()}


def test_ghost_norm_clipping_equals_per_example_autograd():
    torch.manual_seed(0)
    layers = ["1", "3"]
    params = {"1.weight": torch.randn(6, 5), "1.bias": torch.randn(6), "3.weight": torch.randn(3, 6), "3.bias": torch.randn(3)}
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    stacked = {n: p.unsqueeze(0) for n, p in params.items()}
    acts = kernels.forward(stacked, layers, x.unsqueeze(0))
    _, grad_logits = losses.weighted(acts.pop(), y.unsqueeze(0), torch.ones(1, 8))
    mine = kernels.clipped_backward(stacked, layers, acts, grad_logits, clip=0.7)
    theirs = per_example_clipped_sum(params, layers, x, y, clip=0.7)
    for n in params:
        assert torch.allclose(mine[n][0], theirs[n], atol=1e-5), n


def test_dp_sgd_without_noise_or_clipping_is_plain_sgd():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    params = {n: p.detach().unsqueeze(0).repeat(2, *[1] * p.dim()) for n, p in model.named_parameters()}
    images, labels = torch.randn(16, 1, 2, 2), torch.randint(0, 3, (16,))
    rows = [torch.arange(8), torch.arange(8, 16)]
    results = []
    for dp in (None, DpSgd(clip=1e6, noise_multiplier=0.0)):
        recipe = Recipe("sgd", 0.1, 4, 2, dp=dp)  # batches of 4 fill every step: the mean is the sum / B
        gens = [client_generator(0, 12, k) for k in range(2)]
        results.append(local_update(model, params, images, labels, rows, recipe, gens))
    for n in params:
        assert torch.allclose(results[0].params[n], results[1].params[n], atol=1e-5), n


@pytest.mark.parametrize("setting, named", [
    ("privacy.noise_multiplier=0", "privacy.noise_multiplier"),
    ("privacy.noise_multiplier=-1", "privacy.noise_multiplier"),
    ("privacy.noise_multiplier=0.01", "noise_multiplier = 0.01 is below 0.1"),
    ("privacy.clip=0", "privacy.clip"),
    ("privacy.delta=1.0", "privacy.delta"),
    ("strategy.name=\"median\"", "cannot wrap strategy.name = 'median'"),
    ("privacy.accountant=\"moments\"", "privacy.accountant"),
])
def test_bad_privacy_settings_are_refused_before_training(tmp_path, setting, named):
    out = tmp_path / "run"
    result = run("run", three_clients(tmp_path), *SMALL, "--set", setting, "--out", out)
    assert result.exit_code == 2 and named in result.output, result.output
    assert not out.exists()


def test_an_unreachable_target_epsilon_is_refused_naming_what_to_change(tmp_path):
    config = three_clients(tmp_path)
    config.write_text(config.read_text() + '\n[privacy]\nlevel = "client"\nclip = 1.0\ntarget_epsilon = 0.001\n')
    out = tmp_path / "run"
    result = run("run", config, *PLAIN, "--out", out)
    assert result.exit_code == 2 and "privacy.target_epsilon = 0.001 cannot be reached in 3 rounds" in result.output
    assert not out.exists()


def test_a_private_run_records_epsilon_and_resumes_to_the_same_epsilon(tmp_path):
    from rich.console import Console

    from fedbridge import results
    from fedbridge.experiment import load_experiment
    from fedbridge.study import run_study

    config = three_clients(tmp_path)
    settings = [s for s in SMALL if s != "--set"]
    exp, _ = load_experiment(config, settings)
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    run_study(exp, reference, None, Console(quiet=True), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_study(exp, stopped, None, Console(quiet=True), stopping_after("fedavg", 2), quiet=True)

    edited = stopped.parent / "edited"
    import shutil
    shutil.copytree(stopped, edited)
    text = (edited / "config.toml").read_text()
    (edited / "config.toml").write_text(text.replace("noise_multiplier = 0.5", "noise_multiplier = 0.6"))
    refused = run("run", "--resume", edited)
    assert refused.exit_code == 2 and "config.toml was changed after this run started" in refused.output

    assert run("run", "--resume", stopped).exit_code == 0
    assert results.read_metrics(stopped) == results.read_metrics(reference)
    fedavg = [r for r in results.read_metrics(reference) if r["method"] == "fedavg"]
    assert all("epsilon" in r for r in fedavg) and not any("epsilon" in r for r in results.read_metrics(reference)
                                                          if r["method"] == "local")
    by_round = {r["round"]: r["epsilon"] for r in fedavg}
    assert by_round[1] < by_round[2] < by_round[3]
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (stopped, reference))
    assert summary["privacy"] == expected["privacy"]
    assert summary["privacy"]["epsilon"] == pytest.approx(by_round[3])
    assert {k: summary["privacy"][k] for k in ("delta", "noise_multiplier", "clip", "accountant", "level")} == {
        "delta": 1e-5, "noise_multiplier": 0.5, "clip": 1.0, "accountant": "rdp", "level": "client"}
    shown = run("show", stopped)
    assert shown.exit_code == 0 and "ε, FedAvg" in shown.output


def test_sample_level_dp_sgd_accounts_each_client_by_its_size(tmp_path):
    config = tmp_path / "sample.toml"
    config.write_text('''
model = "mlp"
data = { name = "digits" }
clients = [{ count = 2 }]
baselines = ["local", "pooled"]
partition = { name = "sizes", sizes = [100, 300] }
train = { lr = 0.5, batch_size = 20, rounds = 1 }
privacy = { level = "sample", noise_multiplier = 1.0, clip = 1.0 }
''')
    out = tmp_path / "run"
    assert run("run", config, "--out", out, "--quiet").exit_code == 0
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    assert summary["clients"]["1"] > summary["clients"]["2"] > 0  # fewer examples: each step samples more of them
    assert set(summary["methods"]) == {"fedavg", "pooled"}  # training alone is not private


def test_dp_sgd_noise_has_std_sigma_c_over_the_batch_size_each_step():
    # noise 1000 times the clipped signal's bound: after S plain-SGD steps each weight has moved by
    # lr * σC/B * (a sum of S standard normals), std lr σC √S / B
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(50, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    images, labels = torch.randn(64, 1, 5, 10), torch.randint(0, 10, (64,))
    lr, sigma, clip, batch = 0.01, 1000.0, 1.0, 16
    recipe = Recipe("sgd", lr, batch, 1, dp=DpSgd(clip=clip, noise_multiplier=sigma))
    result = local_update(model, params, images, labels, [torch.arange(64)], recipe, [client_generator(0, 12, 0)])
    moved = torch.cat([(result.params[n] - params[n]).flatten() for n in params])
    expected = lr * sigma * clip * math.sqrt(64 // batch) / batch
    assert abs(moved.std().item() - expected) < 0.05 * expected


def test_dittos_personal_models_are_not_clipped_and_the_adaptive_clip_moves_in_the_state():
    from fedbridge.strategies.ditto import ditto
    from fedbridge.strategies.local_only import own

    m, d = 3, 4
    ids = torch.arange(m)
    privacy = Privacy(level="client", noise_multiplier=1.0, clip=0.1, adaptive={"count_noise": 0.6})

    def train(start, adjust=None, epochs=None, copy=0):  # every client moves every weight by +1: norm 2
        return ClientUpdates(ids, torch.ones(m), {n: p + 1 for n, p in start.items()}, torch.ones(m), torch.zeros(m))

    strategy = dpfedavg.wrap(ditto(0.1), privacy, 1.0, m, seed=0)
    state = strategy.init({"w": torch.zeros(1, d)}, m)
    new, _ = strategy.aggregate(state, strategy.local(state, ids, train))
    assert torch.equal(own(new).take(ids)["w"], torch.ones(m, d))  # personal: the whole +1, unclipped, no noise
    assert not torch.equal(new.params["w"], torch.ones(1, d))  # global: clipped to 0.1 and noised
    kept = new.extra["privacy"]
    none_within = torch.zeros(m, dtype=torch.bool)
    assert kept["round"] == 1 and kept["clip"] == dpfedavg.next_clip(privacy, 0.1, none_within, m, 0, 1) != 0.1


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["level", "noise_multiplier", "clip", "delta", "accountant", "mode", "adaptive"]),
                       st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.text(max_size=8), st.booleans(),
                                 st.sampled_from(["client", "sample", "rdp", "pld", "central", "distributed"]),
                                 st.fixed_dictionaries({"lr": st.floats(-1, 1)}))))
def test_any_privacy_table_is_accepted_or_refused_naming_privacy(table):
    from fedbridge.errors import ConfigError
    from fedbridge.experiment import validate

    tree = {"data": {"name": "digits"}, "clients": [{"count": 4}], "train": {"lr": 0.1, "batch_size": 8, "rounds": 2},
            "privacy": table}
    try:
        exp = validate(tree)
    except ConfigError as e:
        assert "privacy" in str(e)
    else:
        p = exp.privacy
        assert p.clip > 0 and 0 < p.delta < 1 and p.noise_multiplier >= 0.1


def test_the_privacy_benchmark_prints_its_tables_and_refuses_a_bad_epsilon(tmp_path, monkeypatch, capsys):
    from benchmarks import privacy as bench

    results = tmp_path / "privacy.jsonl"
    results.write_text(json.dumps({
        "table": "federation", "target_epsilon": 8.0, "epsilon": 7.94, "sigma": 0.806, "accountant": "pld",
        "clean_own": 74.09, "noisy_own": 39.5, "alone_clean_own": None, "alone_noisy_own": None, "clean_test": 74.73,
        "detection_last_auc": {"loss": 1.0, "update_norm": 0.05, "disagreement": 0.0}, "rounds": 50, "seconds": 1.0}) + "\n"
        + json.dumps({"table": "anchors", "source": "Opacus", "target_epsilon": 1.19, "reported": 94.63, "sigma": 1.3,
                      "their_sigma": True, "epsilon": 0.92, "accuracy": 94.0, "epochs": 15, "batch_size": 240, "lr": 0.25,
                      "clip": 1.5, "model": "dp-cnn"}) + "\n")
    monkeypatch.setattr("sys.argv", ["privacy", "--table", str(results)])
    bench.main()
    printed = capsys.readouterr().out
    assert "| 8.0 | 7.94 (PLD) | 0.806 | 74.1 | 39.5 | 74.7 | 1.00 / 0.05 / 0.00 |" in printed
    assert "| Opacus | 1.19 | 94.63 | 1.300 (theirs) | 0.92 | 94.00 | -0.63 | 15, 240, 0.25, 1.5, dp-cnn, 0 |" in printed
    monkeypatch.setattr("sys.argv", ["privacy", "federation", "--epsilons", "-1"])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2 and "--epsilons" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_fedper_and_fedrep_release_only_the_clipped_body_and_keep_their_heads(name):
    from fedbridge.strategies.fedper import FEDPER
    from fedbridge.strategies.fedrep import fedrep
    from fedbridge.strategies.local_only import own

    m, d = 2, 4
    ids = torch.arange(m)
    privacy = Privacy(level="client", noise_multiplier=1.0, clip=0.1)

    def train(start, adjust=None, epochs=None, copy=0):  # every client moves every weight it trains by +1
        step = {n: torch.ones_like(p) for n, p in start.items()}
        step = adjust(start, step) if adjust else step
        return ClientUpdates(ids, torch.ones(m), {n: p + step[n] for n, p in start.items()}, torch.ones(m), torch.zeros(m))

    # σ = 1e-9: the released body update is its clip alone, so the test sees what the clip bounded
    inner = FEDPER if name == "fedper" else fedrep(head_epochs=1)
    strategy = dpfedavg.wrap(inner, privacy, 1e-9, m, seed=0, personal=dpfedavg.personal_parts(name))
    state = strategy.init({"body.weight": torch.zeros(1, d), "head.weight": torch.zeros(1, d)}, m)
    new, _ = strategy.aggregate(state, strategy.local(state, ids, train))
    # the body's +1 in each of 4 weights (norm 2) clipped to 0.1: 0.05 each; counting the head in the
    # norm (2.83) would have given 0.035
    assert torch.allclose(new.params["body.weight"], torch.full((1, d), 0.05))
    assert torch.equal(own(new).take(ids)["head.weight"], torch.ones(m, d))  # as trained: unclipped, no noise


def test_fedper_at_client_level_says_its_heads_are_not_released(tmp_path):
    out = tmp_path / "run"
    result = run("run", three_clients(tmp_path), *SMALL, "--set", 'strategy.name="fedper"', "--set", "baselines=[]",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    assert "own head" in summary["not_released"] and summary["epsilon"] > 0
