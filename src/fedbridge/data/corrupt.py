"""Data-quality profiles: one function per noise model, plus the dispatch the config layer calls.

Applied once per client when the federation is built, to its train and own-test data alike.
Images are float32 in [0, 1], shape [N, C, H, W], of any size and channel count; a table is float32
[N, F], not yet standardised; labels are int64, shape [N], of any number of classes. Every function
returns new tensors and leaves its inputs untouched; all randomness comes from the `generator`
argument, so a seeded generator gives identical output.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbridge.errors import ConfigError

__all__ = [
    "PROFILES",
    "Profile",
    "Range",
    "apply_profile",
    "blur",
    "check_profile",
    "clean",
    "feature_noise",
    "gaussian",
    "missing",
    "occlusion",
    "pair_flip",
    "salt_pepper",
    "shift",
    "symmetric",
]


@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric parameter."""

    low: float
    high: float = math.inf
    low_open: bool = False
    integer: bool = False

    def check(self, profile: str, name: str, value: object) -> None:
        """Raise ConfigError naming profile, parameter and allowed range if `value` is outside."""
        number_ok = isinstance(value, Integral if self.integer else Real)
        if isinstance(value, bool) or not (number_ok and self._contains(value)):
            raise ConfigError(f"{profile}: {name}={value!r} is not allowed; allowed: {name} {self}")

    def _contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        # Rejects nan and inf too: an infinite sigma is never what a config meant.
        return above and value <= self.high and math.isfinite(value)

    def __str__(self) -> str:
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = "" if self.high == math.inf else f" and <= {self.high:g}"
        return low + high + (" (integer)" if self.integer else "")


NONNEGATIVE = Range(0.0)
PROBABILITY = Range(0.0, 1.0)
COUNT = Range(1, integer=True)
# blur's kernel has 2 ceil(3 sigma) + 1 taps at offsets -r..r in float32, which holds every integer
# exactly only up to 2**24: beyond it taps collide (and sigma = 1e30 asked for 6e30 of them)
BLUR_SIGMA = Range(0.0, 2**24 / 3, low_open=True)


def clean(images: Tensor) -> Tensor:
    """The identity profile (a copy, so callers may modify the result)."""
    return images.clone()


def gaussian(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Add N(0, sigma^2) noise to every value, then clamp to [0, 1]."""
    NONNEGATIVE.check("gaussian", "sigma", sigma)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + sigma * noise.to(images.device)).clamp(0.0, 1.0)


def salt_pepper(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each pixel independently becomes 0 with probability p/2 and 1 with probability p/2.

    A pixel is one spatial position: all its channels are set together, which is what makes
    the dots black or white rather than coloured.
    """
    PROBABILITY.check("salt_pepper", "p", p)
    n, _, h, w = images.shape
    u = torch.rand((n, 1, h, w), generator=generator).to(images.device)
    out = images.masked_fill(u < p / 2, 0.0)
    return out.masked_fill((u >= p / 2) & (u < p), 1.0)


def blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur, kernel radius ceil(3 sigma), as two separable 1-D convolutions.

    Zero padding: MNIST-like backgrounds are already 0, so this matches extending the
    background, and unlike reflect padding it puts no upper limit on sigma. The cost is that
    a bright region touching the border darkens there. Deterministic.
    """
    BLUR_SIGMA.check("blur", "sigma", sigma)
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, c, h, w = images.shape
    flat = images.reshape(n * c, 1, h, w)
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return flat.reshape(n, c, h, w)


def occlusion(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Set a size x size square (all channels) at a uniformly random position in each image to 0.

    The square always lies wholly inside the image.
    """
    COUNT.check("occlusion", "size", size)
    n, _, h, w = images.shape
    if size > h or size > w:
        raise ConfigError(
            f"occlusion: size={size} does not fit in {h}x{w} images; need size <= {min(h, w)}"
        )
    top = torch.randint(0, h - size + 1, (n, 1), generator=generator).to(images.device)
    left = torch.randint(0, w - size + 1, (n, 1), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= top) & (rows < top + size)
    in_cols = (cols >= left) & (cols < left + size)
    square = in_rows[:, :, None] & in_cols[:, None, :]
    return images.masked_fill(square[:, None], 0.0)


def symmetric(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """With probability `rate` each label becomes a uniformly chosen *different* class."""
    PROBABILITY.check("symmetric", "rate", rate)
    _check_num_classes("symmetric", num_classes)
    flip = torch.rand(labels.shape, generator=generator).to(labels.device) < rate
    # A shift of 1..K-1 modulo K is uniform over the other K-1 classes.
    shift = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return torch.where(flip, (labels + shift) % num_classes, labels)


def pair_flip(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """With probability `rate` each label y becomes (y + 1) % num_classes."""
    PROBABILITY.check("pair_flip", "rate", rate)
    _check_num_classes("pair_flip", num_classes)
    flip = torch.rand(labels.shape, generator=generator).to(labels.device) < rate
    return torch.where(flip, (labels + 1) % num_classes, labels)


def _reference(table: Tensor, train: int | None) -> Tensor:
    """The rows whose statistics set a table profile's scale: the client's training rows, which come first."""
    return table if train is None else table[:train]


def feature_noise(table: Tensor, sigma: float, generator: torch.Generator, train: int | None = None) -> Tensor:
    """Add N(0, (sigma std_j)^2) noise to every value of feature j, std_j its std over the client's
    training rows (the first `train`): noisy measurements, sigma in units of each feature's spread."""
    NONNEGATIVE.check("feature_noise", "sigma", sigma)
    std = _reference(table, train).std(0, correction=0)
    return table + sigma * std * torch.randn(table.shape, generator=generator, dtype=table.dtype)


def missing(table: Tensor, rate: float, generator: torch.Generator, train: int | None = None) -> Tensor:
    """Remove each cell with probability `rate` and fill it with the mean of its feature's remaining
    cells in the client's training rows (the first `train`), as a careless site imputes (0 where none remain)."""
    PROBABILITY.check("missing", "rate", rate)
    removed = torch.rand(table.shape, generator=generator) < rate
    kept = ~_reference(removed, train)
    mean = (_reference(table, train) * kept).sum(0) / kept.sum(0).clamp(min=1)
    return torch.where(removed, mean.expand_as(table), table)


def shift(table: Tensor, scale: float, generator: torch.Generator, train: int | None = None) -> Tensor:
    """A miscalibrated site: every feature j offset by scale std_j z_j, z_j ~ N(0, 1) drawn once for the
    client (the same on its train and own test rows), std_j over its training rows (the first `train`).
    A site's own standardisation takes the offset out of its own data; it shows where its model meets
    data standardised by others (the common test set)."""
    NONNEGATIVE.check("shift", "scale", scale)
    std = _reference(table, train).std(0, correction=0)
    return table + scale * std * torch.randn(table.shape[1:], generator=generator, dtype=table.dtype)


def _check_num_classes(profile: str, num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"{profile}: label noise needs num_classes >= 2, got {num_classes}")


@dataclass(frozen=True)
class Profile:
    """One entry of PROFILES: what to call, on what, with which parameters."""

    fn: Callable[..., Tensor]
    kind: str  # "image", "table" or "label": which tensor `fn` transforms ("any": none)
    params: dict[str, Range] = field(default_factory=dict)
    needs_generator: bool = True


PROFILES: dict[str, Profile] = {
    "clean": Profile(clean, "any", needs_generator=False),
    "gaussian": Profile(gaussian, "image", {"sigma": NONNEGATIVE}),
    "salt_pepper": Profile(salt_pepper, "image", {"p": PROBABILITY}),
    "blur": Profile(blur, "image", {"sigma": BLUR_SIGMA}, needs_generator=False),
    "occlusion": Profile(occlusion, "image", {"size": COUNT}),
    "symmetric": Profile(symmetric, "label", {"rate": PROBABILITY}),
    "pair_flip": Profile(pair_flip, "label", {"rate": PROBABILITY}),
    "feature_noise": Profile(feature_noise, "table", {"sigma": NONNEGATIVE}),
    "missing": Profile(missing, "table", {"rate": PROBABILITY}),
    "shift": Profile(shift, "table", {"scale": NONNEGATIVE}),
}
KIND_OF_DATA = {"image": "images", "table": "tables"}


def refusal(name: str, tabular: bool) -> str | None:
    """Why profile `name` cannot apply to this kind of data (images, or a table), or None."""
    kind = _lookup(name).kind
    data = "table" if tabular else "image"
    if kind in KIND_OF_DATA and kind != data:
        fits = sorted(n for n, p in PROFILES.items() if p.kind in (data, "label", "any"))
        return (f"profile {name!r} applies to {KIND_OF_DATA[kind]}, and this data is "
                f"{'a table' if tabular else 'images'}; its profiles: {', '.join(fits)}")
    return None


def apply_profile(
    name: str,
    params: dict[str, object],
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    train: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply the profile `name` with `params`; return new (images, labels). `images` may be a table
    [N, F]: its first `train` rows, the client's training rows, set a table profile's scale.

    Every parameter of the profile is required and no other is accepted.
    """
    check_profile(name, params)
    if why := refusal(name, images.ndim == 2):
        raise ConfigError(why)
    profile = PROFILES[name]
    extra = {"generator": generator} if profile.needs_generator else {}
    if profile.kind == "table":
        return profile.fn(images, **params, **extra, train=train), labels.clone()
    if profile.kind in ("image", "any"):
        return profile.fn(images, **params, **extra), labels.clone()
    return images.clone(), profile.fn(labels, **params, num_classes=num_classes, **extra)


def check_profile(name: str, params: dict[str, object]) -> None:
    """Validate a profile name and its parameters without data, so a bad config fails at load.

    What depends on the data (an occlusion square larger than the images, a blur's memory) is
    checked with the data before a run starts (fedbridge.bounds), and by the profile function itself.
    """
    profile = _lookup(name)
    _check_param_names(name, profile, params)
    for key, value in params.items():
        profile.params[key].check(name, key, value)


def _lookup(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(
            f"unknown corruption profile {name!r}; allowed: {', '.join(sorted(PROFILES))}"
        )
    return PROFILES[name]


def _check_param_names(name: str, profile: Profile, params: dict[str, object]) -> None:
    allowed = ", ".join(f"{k} ({r})" for k, r in profile.params.items()) or "none"
    unknown = sorted(set(params) - set(profile.params))
    missing = sorted(set(profile.params) - set(params))
    if unknown:
        raise ConfigError(
            f"corruption profile {name!r} has no parameter {', '.join(unknown)}; allowed: {allowed}"
        )
    if missing:
        raise ConfigError(
            f"corruption profile {name!r} needs parameter {', '.join(missing)}; allowed: {allowed}"
        )
