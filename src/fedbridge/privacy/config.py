"""The [privacy] table: client-level DP-FedAvg or sample-level DP-SGD, and its accounting."""

from typing import Literal

from pydantic import Field, model_validator

from fedbridge.strict import Strict

# σ below this is refused: ε is then in the hundreds (σ = 0.1, 15 full rounds: ε = 915), no
# guarantee at all, and PLD's accounting of it grows without bound (σ = 0.1: 23 s; σ = 0.01: over 2 minutes)
MIN_NOISE_MULTIPLIER = 0.1
# σ above this is not looked for: a round's mean update then carries noise 100 C / m, which buries
# any update of a federation this toolkit simulates (m up to a few hundred)
MAX_NOISE_MULTIPLIER = 100.0

# strategies whose server step is a mean of the clients' updates then post-processing (a server
# optimizer, a proximal local term, fine-tuning or Ditto's personal models that never leave the
# client, FedPer's and FedRep's personal heads, of which only the shared body is released):
# clipping each update to C bounds the mean's sensitivity by C / m
CLIENT_LEVEL = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "finetune", "ditto", "fedper",
                "fedrep")
# why the others are refused at client level, by name; any other strategy: its rule is not one of these
REFUSED = {
    "median": "a coordinate-wise median moves by up to C in every coordinate when one client changes "
              "(L2 sensitivity sqrt(d) C, not C)",
    "trimmed_mean": "a trimmed mean moves by up to C in every coordinate when one client changes",
    "krum": "Krum releases one client's update whole, chosen by the others",
    "bulyan": "Bulyan releases selected clients' coordinates, chosen by the others",
    "clipping": "it is a norm-clipped mean already; use fedavg with privacy.clip",
    "quality": "its weights come from the clients' training losses, which are not clipped or noised",
    "qfedavg": "its weights come from the clients' training losses, which are not clipped or noised",
    "afl": "its weights come from the clients' training losses, which are not clipped or noised",
    "fednova": "it rescales each update by the client's steps, so the clip no longer bounds the mean",
    "scaffold": "its control variates leave the clients unclipped and un-noised",
    "custom": "its rule is unknown, so no sensitivity can be given for it",
}
# at sample level every strategy's server step is post-processing of DP-SGD models, except those
# that read the clients' raw training losses, and FedRep, whose head phase adds local steps (that
# shape the released body) beyond the local_epochs the accountant counts
SAMPLE_REFUSED = ("quality", "qfedavg", "afl", "custom", "fedrep")


class AdaptiveClip(Strict):
    """Andrew et al. 2021: C <- C exp(-lr (b - target_quantile)), b the noised share of the round's
    updates already within C; its noise count_noise (std of the noised count of clipped clients)."""

    target_quantile: float = Field(default=0.5, ge=0, le=1)
    lr: float = Field(default=0.2, gt=0)
    count_noise: float | None = Field(default=None, gt=0)  # unset: clients per round / 20, as the paper


class Privacy(Strict):
    level: Literal["client", "sample"]
    noise_multiplier: float | None = Field(default=None, gt=0)  # σ: noise std / clip
    target_epsilon: float | None = Field(default=None, gt=0)  # then σ is found for the planned rounds
    clip: float = Field(gt=0)  # C: the L2 bound of a client's update (client) or an example's gradient (sample)
    adaptive: AdaptiveClip | None = None
    # 1e-5: the δ of TF Privacy's and Opacus's MNIST anchors, and below 1/n for every federation and
    # client data set up to 100,000 clients or samples (MNIST's 60,000: 1/n = 1.7e-5)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "pld"] = "rdp"
    mode: Literal["central", "distributed"] = "central"

    @model_validator(mode="after")
    def _one_noise(self) -> "Privacy":
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give one of noise_multiplier (σ > 0) or target_epsilon (ε > 0; σ is then found "
                             "for the planned rounds)")
        if self.noise_multiplier is not None and self.noise_multiplier < MIN_NOISE_MULTIPLIER:
            raise ValueError(f"noise_multiplier = {self.noise_multiplier:g} is below {MIN_NOISE_MULTIPLIER:g}, where "
                             "ε is in the hundreds (no guarantee); give σ >= 0.1, or remove [privacy] to train "
                             "without DP (strategy.name = \"clipping\" clips without noise)")
        if self.level == "sample":
            if self.target_epsilon is not None:
                raise ValueError("target_epsilon at level 'sample' depends on every client's data size, known only "
                                 "once the data is split; give noise_multiplier (benchmarks/privacy.py finds σ for a "
                                 "target ε on given sizes)")
            if self.adaptive is not None or self.mode != "central":
                raise ValueError("adaptive clipping and mode = 'distributed' are client-level settings; at level "
                                 "'sample' each client clips and noises its own gradients")
        return self


def setting_problem(privacy: Privacy, strategy: str) -> str | None:
    """Why `strategy` cannot run under this privacy setting, or None (a model DP-SGD cannot take is
    refused once the data's input shape is known: per_sample.refusal)."""
    if privacy.level == "sample":
        if strategy in SAMPLE_REFUSED:
            why = ("its head phase trains more local steps a round than train.local_epochs, which ε counts"
                   if strategy == "fedrep" else "its server reads the clients' raw training losses (or, custom, may), "
                   "which DP-SGD does not cover")
            return f"privacy.level = 'sample' with strategy.name = {strategy!r}: {why}; use another strategy"
        return None
    if strategy in CLIENT_LEVEL:
        return None
    why = REFUSED.get(strategy, "its server step is not a mean of the clients' updates")
    return (f"privacy.level = 'client' cannot wrap strategy.name = {strategy!r}: {why}; client-level DP runs with "
            f"{', '.join(CLIENT_LEVEL)}")


def count_noise(privacy: Privacy, clients_per_round: int) -> float:
    assert privacy.adaptive is not None
    return privacy.adaptive.count_noise or clients_per_round / 20


def update_noise(privacy: Privacy, sigma: float, clients_per_round: int) -> float | None:
    """The noise multiplier of the updates themselves: σ, or with adaptive clipping the part of σ left
    once the clipped count takes its share (Andrew et al. 2021, Thm 1: σ^-2 = σ_Δ^-2 + (2 σ_b)^-2);
    None when the count's noise is too small to leave any."""
    if privacy.adaptive is None:
        return sigma
    left = sigma**-2 - (2 * count_noise(privacy, clients_per_round)) ** -2
    return left**-0.5 if left > 0 else None
