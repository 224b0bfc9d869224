"""The base of every config table: unknown keys refused, no inf or NaN, nothing beyond float32."""

from pydantic import BaseModel, ConfigDict, model_validator

# the engine computes in float32: a setting beyond its range becomes inf or 0 there (tau = 1e-46
# divides by zero, alpha = 1e39 multiplies by inf), and a run ends at chance with NaN losses.
# torch.finfo(torch.float32)'s max and tiny, written out so that reading a config needs no torch
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38


class Strict(BaseModel):
    # inf passes every bound (lr > 0, mu >= 0, ...) and a run then ends at chance with NaN losses
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _within_float32(self) -> "Strict":
        for key, value in self:
            if isinstance(value, float) and value and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
                raise ValueError(
                    f"{key} = {value:g} is beyond float32, in which training computes (magnitudes from "
                    f"{FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}, or 0)"
                )
        return self
