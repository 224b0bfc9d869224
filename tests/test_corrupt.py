"""Tolerances on noisy statistics are 5 standard errors of the estimate, computed from the sample
count in each test; with fixed seeds the tests are deterministic, and 5 SE means an honest
implementation would fail with some other seed about once in 1.7 million."""

import math

import pytest
import torch

from fedbridge.data import corrupt
from fedbridge.data.corrupt import PROFILES, apply_profile, check_profile
from fedbridge.errors import ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gray(n: int = 100, c: int = 1, h: int = 28, w: int = 28) -> torch.Tensor:
    return torch.full((n, c, h, w), 0.5)


# --- image noise ------------------------------------------------------------------------------


def test_gaussian_mean_and_std():
    out = corrupt.gaussian(gray(), 0.1, gen())
    diff = out - 0.5
    n = diff.numel()  # 78,400 values; clamping needs a 5-sigma draw, so it barely matters here
    assert abs(diff.mean().item()) < 5 * 0.1 / math.sqrt(n)  # SE of the mean: 3.6e-4
    assert abs(diff.std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * n)  # SE of the std: 2.5e-4


def test_gaussian_clamps_to_unit_interval():
    out = corrupt.gaussian(gray(), 1.0, gen())
    assert out.min().item() == 0.0 and out.max().item() == 1.0


def test_gaussian_sigma_zero_is_identity():
    assert torch.equal(corrupt.gaussian(gray(), 0.0, gen()), gray())


def test_salt_pepper_fractions():
    out = corrupt.salt_pepper(gray(), 0.2, gen())
    n = out.numel()
    tolerance = 5 * math.sqrt(0.1 * 0.9 / n)  # 5 SE of a proportion of 0.1: 0.0054
    assert abs((out == 0).float().mean().item() - 0.1) < tolerance
    assert abs((out == 1).float().mean().item() - 0.1) < tolerance
    assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}


def test_salt_pepper_sets_all_channels_of_a_pixel_together():
    out = corrupt.salt_pepper(gray(c=3), 0.5, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_blur_keeps_a_constant_interior_constant():
    out = corrupt.blur(torch.ones(2, 1, 20, 20), 1.0)  # radius ceil(3 * 1) = 3
    assert torch.allclose(out[..., 3:-3, 3:-3], torch.ones(1), atol=1e-6)
    assert out[0, 0, 0, 0].item() < 1.0  # zero padding darkens the border


def test_blur_of_a_delta_sums_to_one_and_is_symmetric():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 10] = 1.0
    out = corrupt.blur(image, 1.5)  # radius 5: the kernel fits inside the image
    assert abs(out.sum().item() - 1.0) < 1e-5
    assert out.argmax().item() == 10 * 21 + 10
    assert torch.allclose(out, out.flip(-1)) and torch.allclose(out, out.transpose(-1, -2))


def test_occlusion_zeroes_exactly_a_square():
    out = corrupt.occlusion(torch.ones(50, 3, 10, 12), 4, gen())
    zeros = out == 0
    assert zeros.sum(dim=(2, 3)).eq(16).all()  # 4 x 4 per image and channel
    assert torch.equal(zeros[:, 0], zeros[:, 2])  # same square on every channel
    rows, cols = zeros[:, 0].any(dim=2), zeros[:, 0].any(dim=1)
    assert rows.sum(dim=1).eq(4).all() and cols.sum(dim=1).eq(4).all()


def test_occlusion_full_size_blanks_the_image():
    assert corrupt.occlusion(torch.ones(2, 1, 5, 5), 5, gen()).eq(0).all()


def test_occlusion_too_big():
    with pytest.raises(ConfigError, match="size=6"):
        corrupt.occlusion(torch.ones(2, 1, 8, 5), 6, gen())


# --- label noise ------------------------------------------------------------------------------


def test_symmetric_rate_and_never_same_class():
    labels = torch.arange(10_000) % 10
    out = corrupt.symmetric(labels, 0.4, 10, gen())
    changed = (out != labels).float().mean().item()
    assert abs(changed - 0.4) < 5 * math.sqrt(0.4 * 0.6 / 10_000)  # 5 SE: 0.0245
    assert out.min().item() >= 0 and out.max().item() <= 9


def test_symmetric_rate_one_changes_every_label_uniformly():
    labels = torch.zeros(10_000, dtype=torch.int64)
    out = corrupt.symmetric(labels, 1.0, 5, gen())
    counts = torch.bincount(out, minlength=5)
    assert counts[0].item() == 0
    # Each of the 4 other classes ~ Binomial(10000, 1/4): mean 2500, SD 43.
    assert (counts[1:] - 2500).abs().max().item() < 5 * 43.3


def test_pair_flip_mapping():
    labels = torch.arange(10)
    assert corrupt.pair_flip(labels, 1.0, 10, gen()).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert torch.equal(corrupt.pair_flip(labels, 0.0, 10, gen()), labels)
    big = torch.arange(10_000) % 10
    out = corrupt.pair_flip(big, 0.4, 10, gen())
    flipped = out != big
    assert torch.equal(out[flipped], (big[flipped] + 1) % 10)
    assert abs(flipped.float().mean().item() - 0.4) < 5 * math.sqrt(0.4 * 0.6 / 10_000)


# --- table noise ------------------------------------------------------------------------------


def table(n: int = 2000, stds: tuple[float, ...] = (1.0, 10.0, 0.1)) -> torch.Tensor:
    return torch.randn(n, len(stds), generator=gen(7)) * torch.tensor(stds) + 5.0


def test_feature_noise_is_in_units_of_each_features_std():
    x = table()
    noise = corrupt.feature_noise(x, 0.5, gen()) - x
    std = x.std(0, correction=0)
    n = len(x)
    # the noise of feature j has std 0.5 * std_j: within 5 SE (0.5 / sqrt(2n) relative)
    assert torch.all((noise.std(0) / (0.5 * std) - 1).abs() < 5 / math.sqrt(2 * n))


def test_feature_noise_takes_the_scale_from_the_training_rows():
    x = torch.cat([torch.zeros(10, 1), torch.full((10, 1), 100.0)])  # train rows have std 0
    assert torch.equal(corrupt.feature_noise(x, 1.0, gen(), train=10), x)


def test_missing_imputes_the_training_mean_of_the_remaining_cells():
    x = torch.tensor([[1.0], [3.0], [100.0]])  # the third row is a test row: never in the mean
    out = corrupt.missing(x, 0.5, gen(3), train=2)
    removed = out != x
    kept_train = x[:2][~removed[:2]]
    assert torch.all(out[removed] == (kept_train.mean() if len(kept_train) else 0.0))


def test_missing_rate():
    out = corrupt.missing(table(), 0.3, gen())
    share = (out != table()).float().mean().item()
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / out.numel())


def test_shift_offsets_every_row_of_a_feature_alike():
    x = table()
    offset = corrupt.shift(x, 2.0, gen()) - x
    assert torch.allclose(offset, offset[0].expand_as(offset), atol=1e-4)
    assert torch.all(offset[0] != 0)


def test_image_profiles_refuse_a_table_and_table_profiles_images():
    labels = torch.zeros(20, dtype=torch.int64)
    with pytest.raises(ConfigError, match="'blur' applies to images, and this data is a table"):
        apply_profile("blur", {"sigma": 1.0}, torch.rand(20, 5), labels, 10, gen())
    with pytest.raises(ConfigError, match="'missing' applies to tables, and this data is images"):
        apply_profile("missing", {"rate": 0.1}, torch.rand(20, 1, 8, 8), labels, 10, gen())


@pytest.mark.parametrize("num_classes", [2, 3, 100])
def test_label_noise_for_any_number_of_classes(num_classes):
    labels = torch.arange(1000) % num_classes
    out = corrupt.symmetric(labels, 1.0, num_classes, gen())
    assert torch.all(out != labels) and out.max() < num_classes


# --- the dispatch -----------------------------------------------------------------------------

EXAMPLE_PARAMS = {
    "clean": {},
    "gaussian": {"sigma": 0.2},
    "salt_pepper": {"p": 0.3},
    "blur": {"sigma": 1.0},
    "occlusion": {"size": 3},
    "symmetric": {"rate": 0.5},
    "pair_flip": {"rate": 0.5},
    "feature_noise": {"sigma": 0.5},
    "missing": {"rate": 0.3},
    "shift": {"scale": 1.0},
}


def samples(name: str) -> torch.Tensor:
    """A table [20, 5] for the table profiles, else images [20, 1, 8, 8]."""
    shape = (20, 5) if PROFILES[name].kind == "table" else (20, 1, 8, 8)
    return torch.rand(shape, generator=gen(99))


def test_example_params_cover_every_profile():
    assert set(EXAMPLE_PARAMS) == set(PROFILES)


def run(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = samples(name)
    labels = torch.arange(20) % 10
    return apply_profile(name, EXAMPLE_PARAMS[name], images, labels, 10, gen(seed))


@pytest.mark.parametrize("name", PROFILES)
def test_check_profile_accepts_the_examples(name):
    check_profile(name, EXAMPLE_PARAMS[name])


def test_check_profile_rejects_without_data():
    with pytest.raises(ConfigError, match="rate=2"):
        check_profile("symmetric", {"rate": 2})


@pytest.mark.parametrize("name", PROFILES)
def test_same_seed_same_output(name):
    a, b = run(name, 5), run(name, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", [n for n, p in PROFILES.items() if p.needs_generator])
def test_other_seed_other_output(name):
    a, b = run(name, 5), run(name, 6)
    assert not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))


@pytest.mark.parametrize("name", PROFILES)
def test_inputs_untouched_and_outputs_new(name):
    images = samples(name)
    labels = torch.arange(20) % 10
    images_before, labels_before = images.clone(), labels.clone()
    out_images, out_labels = apply_profile(name, EXAMPLE_PARAMS[name], images, labels, 10, gen())
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    assert out_images.data_ptr() != images.data_ptr()
    assert out_labels.data_ptr() != labels.data_ptr()
    on_samples = PROFILES[name].kind != "label"
    assert torch.equal(out_labels if on_samples else out_images, labels if on_samples else images)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("gauss", {}, "unknown corruption profile 'gauss'.*gaussian"),
        ("gaussian", {"sgma": 0.1}, "no parameter sgma.*sigma"),
        ("gaussian", {}, "needs parameter sigma"),
        ("clean", {"sigma": 0.1}, "no parameter sigma.*none"),
        ("gaussian", {"sigma": -0.1}, "sigma=-0.1.*>= 0"),
        ("gaussian", {"sigma": "0.1"}, "sigma='0.1'"),
        ("salt_pepper", {"p": 1.5}, "p=1.5.*<= 1"),
        ("blur", {"sigma": 0}, "sigma=0.*> 0"),
        ("blur", {"sigma": math.inf}, "sigma=inf"),
        ("occlusion", {"size": 0}, "size=0.*integer"),
        ("occlusion", {"size": 2.5}, "size=2.5"),
        ("occlusion", {"size": True}, "size=True"),
        ("occlusion", {"size": 9}, "size=9.*size <= 8"),
        ("symmetric", {"rate": math.nan}, "rate=nan"),
        ("pair_flip", {"rate": -0.1}, "rate=-0.1"),
    ],
)
def test_bad_profile_or_params(name, params, message):
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ConfigError, match=message):
        apply_profile(name, params, torch.ones(2, 1, 8, 8), labels, 10, gen())
