import torch

from fedbridge.models import build_model, count_params, init_params


def test_parameter_counts_match_the_papers():
    assert count_params(build_model("mlp", (1, 28, 28), 10)) == 784 * 128 + 128 + 128 * 10 + 10 == 101_770
    assert count_params(build_model("2nn", (1, 28, 28), 10)) == 199_210
    assert count_params(build_model("cnn", (1, 28, 28), 10)) == 1_663_370


def test_models_take_their_input_size_from_the_dataset():
    x = torch.zeros(3, 1, 8, 8)
    for name in ("mlp", "2nn", "cnn"):
        assert build_model(name, (1, 8, 8), 10)(x).shape == (3, 10)


def test_init_is_seeded_and_bounded():
    model = build_model("mlp", (1, 28, 28), 10)
    a = init_params(model, torch.Generator().manual_seed(1))
    b = init_params(model, torch.Generator().manual_seed(1))
    c = init_params(model, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["1.weight"], c["1.weight"])
    assert set(a) == {n for n, _ in model.named_parameters()}
    # PyTorch's default Linear bound: 1/sqrt(fan_in) = 1/28 for the first layer
    assert a["1.weight"].abs().max() <= 1 / 28


def test_tabular_model_is_sized_from_the_features():
    # 30 features -> 60 hidden units -> 2 classes: 30*60 + 60 + 60*2 + 2 = 1,982 parameters
    model = build_model("tabular", (30,), 2)
    assert count_params(model) == 1_982
    assert model(torch.zeros(4, 30)).shape == (4, 2)
    # the width stays within [32, 256]
    assert count_params(build_model("tabular", (4,), 3)) == 4 * 32 + 32 + 32 * 3 + 3
