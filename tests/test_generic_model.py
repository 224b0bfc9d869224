"""Any nn.Module through the generic path: held to the per-client reference loop, seeded, and refused
with a clear message when its factory is wrong."""

import pytest
import torch

from conftest import CONFIGS
from fedbridge import generic
from fedbridge.errors import ConfigError, DataError
from fedbridge.experiment import load_experiment
from fedbridge.local import Recipe, client_generator, evaluate, local_update
from fedbridge.models import build_model, init_params
from fedbridge.reference import reference_update
from test_cli import run
from test_reference import RECIPES, SHAPE, SIZES, _data, fedavg_rounds

MIXED = "custom_models:mixed"
# BatchNorm's step counter (int64) is not trained state: it stays as the round began, in both (its
# update would dominate the norms, distances and detection on the updates)
COUNTER = "bn.num_batches_tracked"
# float32, max abs after 2 rounds (measured on AMD EPYC): SGD 1.5e-6, momentum 5.4e-6; in float64
# all three optimizers agree to 8e-14, so what is left in float32 is rounding, which BatchNorm's
# small batches (4 samples) and Adam's division by small second moments lift from run to run
FLOAT32 = {"sgd": Recipe("sgd", lr=0.05, batch_size=4, local_epochs=2), "momentum": RECIPES["momentum"]}


@pytest.mark.parametrize("optimizer", list(FLOAT32))
def test_generic_path_equals_the_reference_loop(optimizer):
    engine = fedavg_rounds(local_update, MIXED, FLOAT32[optimizer])
    loop = fedavg_rounds(reference_update, MIXED, FLOAT32[optimizer])
    start = fedavg_rounds(local_update, MIXED, FLOAT32[optimizer], rounds=0)
    assert set(engine) == set(loop) == set(build_model(MIXED, SHAPE, 10).state_dict())
    for n in engine:
        if n != COUNTER:
            assert (engine[n] - start[n]).abs().max() > 1e-3, f"{n} did not train"
        assert (engine[n] - loop[n]).abs().max() <= 1e-5, n
    assert engine[COUNTER].item() == 0
    # evaluation is in eval mode: BatchNorm from the running statistics, no Dropout
    images, labels, _ = _data()
    accuracy, loss = evaluate(build_model(MIXED, SHAPE, 10), engine, images, labels)
    module = build_model(MIXED, SHAPE, 10)
    module.load_state_dict({n: p[0] for n, p in loop.items()})
    with torch.no_grad():
        logits = module.eval()(images)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-5)
    assert accuracy.item() == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)


@pytest.mark.parametrize("optimizer", list(RECIPES))
def test_a_model_without_batch_statistics_trains_under_vmap_as_the_reference_loop(optimizer):
    model = "custom_models:normed"
    assert not generic.per_client(build_model(model, SHAPE, 10))
    engine = fedavg_rounds(local_update, model, RECIPES[optimizer])
    loop = fedavg_rounds(reference_update, model, RECIPES[optimizer])
    for n in engine:
        assert (engine[n] - loop[n]).abs().max() <= 1e-5, n


@pytest.mark.parametrize("optimizer", list(RECIPES))
def test_generic_path_equals_the_reference_loop_in_float64(optimizer):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        engine = fedavg_rounds(local_update, MIXED, RECIPES[optimizer])
        loop = fedavg_rounds(reference_update, MIXED, RECIPES[optimizer])
    finally:
        torch.set_default_dtype(before)
    for n in engine:
        assert (engine[n] - loop[n]).abs().max() <= 1e-10, n


def test_clients_with_a_gradient_hook_train_together_as_alone():
    # a hook sees all clients at once: BatchNorm and Dropout then run through one module per client
    images, labels, rows = _data()
    model = build_model(MIXED, SHAPE, 10)
    params = {n: p.expand(len(SIZES), *p.shape).clone() for n, p in init_params(model, client_generator(0, 10)).items()}
    generators = lambda: [client_generator(0, 12, 1, k) for k in range(len(SIZES))]  # noqa: E731
    together = local_update(model, params, images, labels, rows, FLOAT32["sgd"], generators(), adjust=lambda p, g: g)
    alone = local_update(model, params, images, labels, rows, FLOAT32["sgd"], generators())
    # alone, each client trains on a single-threaded worker; together on every thread: rounding only
    # (2.6e-6 measured)
    for n in params:
        assert (together.params[n] - alone.params[n]).abs().max() <= 1e-5, n


def test_initialisation_is_the_modules_own_seeded_and_leaves_the_global_rng_alone():
    model = build_model(MIXED, SHAPE, 10)
    rng = torch.get_rng_state()
    first = init_params(model, client_generator(0, 10))
    assert torch.equal(torch.get_rng_state(), rng)
    again = init_params(model, client_generator(0, 10))
    other = init_params(model, client_generator(1, 10))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])
    # reset_parameters: LayerNorm and BatchNorm start at weight 1, bias 0, running variance 1
    assert torch.equal(first["norm.weight"], torch.ones(8)) and torch.equal(first["bn.running_var"], torch.ones(8))
    assert first[generic.trainable(model)[0]].dtype == torch.float32 and first["bn.num_batches_tracked"].item() == 0


def test_dropout_is_seeded_per_client_whatever_the_threads():
    images, labels, rows = _data()
    model = build_model(MIXED, SHAPE, 10)
    params = {n: p.expand(len(SIZES), *p.shape).clone() for n, p in init_params(model, client_generator(0, 10)).items()}
    runs = [local_update(model, params, images, labels, rows, FLOAT32["sgd"],
                         [client_generator(0, 12, 1, k) for k in range(len(SIZES))]).params for _ in range(2)]
    torch.manual_seed(123)  # the global RNG plays no part
    runs.append(local_update(model, params, images, labels, rows, FLOAT32["sgd"],
                             [client_generator(0, 12, 1, k) for k in range(len(SIZES))]).params)
    assert all(torch.equal(runs[0][n], r[n]) for r in runs[1:] for n in params)


@pytest.mark.parametrize("model, message", [
    ("no_such_module:f", "cannot import module 'no_such_module'"),
    ("custom_models:nothing", "has no attribute 'nothing'"),
    ("custom_models:NOT_CALLABLE", "is of type int, not \"package.module:function\""),
    ("resnet18", "neither a built-in model"),
])
def test_a_model_that_cannot_be_found_is_refused_with_the_config(model, message):
    with pytest.raises(ConfigError, match="model") as e:
        load_experiment(CONFIGS / "seed.toml", [f"model={model}"])
    assert message in str(e.value)


@pytest.mark.parametrize("model, message", [
    ("custom_models:raises", "raises((1, 8, 8), 10) raised RuntimeError: no weights here"),
    ("custom_models:not_a_module", "returned an object of type str, not a torch.nn.Module"),
    ("custom_models:wrong_output", "for a batch of 2 inputs is [2, 11]; it must be logits [batch, 10]"),
    ("cifar-cnn", "at least 14x14"),
])
def test_a_model_that_does_not_fit_the_data_stops_before_the_run_directory(tmp_path, model, message):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", "--set", "data.name=digits", "--set", f"model={model}", "--out", out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_a_custom_model_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run("run", CONFIGS / "seed.toml", "--set", "data.name=digits", "--set", "partition.sizes=[300,300]",
                 "--set", "train.rounds=2", "--set", f"model={MIXED}", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").exists()


def test_a_batch_of_one_sample_under_batchnorm_is_named_not_a_traceback():
    images, labels, rows = _data()  # 23, 7 and 16 samples: batches of 11 leave 23 one over
    model = build_model(MIXED, SHAPE, 10)
    params = {n: p.expand(len(SIZES), *p.shape).clone() for n, p in init_params(model, client_generator(0, 10)).items()}
    with pytest.raises(DataError, match="client with 23 training samples has a last batch of 1 sample at train.batch_size = 11"):
        local_update(model, params, images, labels, rows, Recipe("sgd", 0.1, 11, 1), [torch.Generator()] * 3)
