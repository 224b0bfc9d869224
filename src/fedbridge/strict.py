"""The base of every config table: unknown keys refused, no type converted, no inf or NaN, nothing
beyond float32; and the upper bounds of the counts a config gives."""

from pydantic import BaseModel, ConfigDict, model_validator

# the engine computes in float32: a setting beyond its range becomes inf or 0 there (tau = 1e-46
# divides by zero, alpha = 1e39 multiplies by inf), and a run ends at chance with NaN losses.
# torch.finfo(torch.float32)'s max and tiny, written out so that reading a config needs no torch
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38


# Sane upper bounds of the counts a config gives (README, "Experiments"): far above any study this
# toolkit is for, so none is ever in the way, yet low enough that a typo (1e9, an extra 000) is
# refused with the config instead of running for years or ending in a MemoryError.
# 100,000 rounds: the rounds-to-target tables of FL papers (McMahan et al. 2017) go to a few thousand;
# at even 10 ms a round, 100,000 is hours of nothing but loop overhead.
MAX_ROUNDS = 100_000
# 10,000 local epochs: papers use 1-20; every epoch of a client's samples is in its batch schedule.
MAX_LOCAL_EPOCHS = 10_000
# 1,000 seeds: over 1,000 seeds a 95% interval's half-width is 0.06 std, far finer than any accuracy
# gap of interest; and every seed's partition is drawn (and held) before the first round.
MAX_SEEDS = 1_000
# 1,000,000 clients, per group and in all: the largest cross-device simulations; every client needs
# samples of its own, so the data (60,000 MNIST images) bounds it much lower in practice.
MAX_CLIENTS = 1_000_000
# a batch of 1,000,000: above every dataset here (60,000 MNIST images; a larger batch is one partial
# batch per epoch); its memory is checked against the machine's (fedbridge.bounds).
MAX_BATCH_SIZE = 1_000_000


class Strict(BaseModel):
    # inf passes every bound (lr > 0, mu >= 0, ...) and a run then ends at chance with NaN losses.
    # strict: a value of the wrong type is refused, not converted (rounds = true was one round,
    # "2" was 2, "yes" was true); an int still stands for a float (lr = 1)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _within_float32(self) -> "Strict":
        for key, value in self:
            if isinstance(value, float) and value and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
                raise ValueError(
                    f"{key} = {value:g} is beyond float32, in which training computes (magnitudes from "
                    f"{FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}, or 0)"
                )
        return self
