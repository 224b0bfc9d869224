"""Model parameters <-> Flower's ArrayRecord: the one place the two representations meet."""

from flwr.app import ArrayRecord

from fedbridge.optim import Params


def to_record(params: Params) -> ArrayRecord:
    """One model [1, ...] (fedbridge's leading model axis) as an ArrayRecord of plain tensors."""
    return ArrayRecord({n: p[0].contiguous() for n, p in params.items()})


def from_record(record: ArrayRecord) -> Params:
    """The ArrayRecord back as one model [1, ...], names and order preserved."""
    return {n: p.unsqueeze(0) for n, p in record.to_torch_state_dict().items()}
