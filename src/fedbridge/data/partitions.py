"""[partition]: how the training data is split over clients, validated with the rest of the experiment
(fedbridge.experiment); data/partition.py draws the split these name."""

from typing import Annotated, Literal, Union

from pydantic import Field

from fedbridge.strict import Strict


class IID(Strict):
    name: Literal["iid"]
    samples_per_client: int | None = Field(default=None, gt=0)


class Dirichlet(Strict):
    name: Literal["dirichlet"]
    alpha: float = Field(gt=0)
    min_size: int = Field(default=10, ge=1)


class Shards(Strict):
    name: Literal["shards"]
    shards_per_client: int = Field(default=2, ge=1)
    shard_size: int | None = Field(default=None, gt=0)


class Quantity(Strict):
    name: Literal["quantity"]
    alpha: float = Field(gt=0)
    min_size: int = Field(default=10, ge=1)


class Sizes(Strict):
    name: Literal["sizes"]
    sizes: list[Annotated[int, Field(gt=0)]]


class Natural(Strict):
    """Each holder the data names (data.client's values, or an image folder's client folders) is one client."""

    name: Literal["natural"]


Partition = Annotated[Union[IID, Dirichlet, Shards, Quantity, Sizes, Natural], Field(discriminator="name")]
