"""A file of one model per client, {"client1": state dict, "client2": ...}, exactly as torch.save
writes it and torch.load reads it, but written a chunk of clients at a time: 10,000 personal models
of the 2NN are 8 GB, which a client_state store keeps in files and torch.save would need in memory
all at once.

torch.save pickles the object with each tensor's storage named by a key ("0", "1", ... in the order
the pickle meets them), then writes each storage as a record "data/KEY" of its zip archive. Here the
pickle is made from placeholders that reduce exactly as tensors do (torch._utils._rebuild_tensor_v2
on a storage, what torch.load's weights_only unpickler allows), so it holds no data; then each
chunk's tensors are written as their records in the same order, through torch's own zip writer
(alignment and CRC32 as torch.save's). tests/test_weights_file.py holds the pickle to torch.save's,
byte for byte. torch._utils and torch.serialization._open_zipfile_writer are private: torch is
pinned (constraints.txt), and that test is what says when they changed.
"""

import collections
import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import torch

Params = dict[str, torch.Tensor]


class _Storage:
    """A storage in the pickle: its key, dtype and element count (torch.save's persistent id)."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """A contiguous tensor in the pickle, reduced as torch.Tensor reduces one."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int):
        stride = torch.empty(self.shape, device="meta").stride()
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, torch.storage._dtype_to_storage_type_map()[obj.dtype])  # FloatStorage, ...
            return "storage", storage_type, obj.key, "cpu", obj.numel
        return None


def skeleton(n: int, model: Params) -> bytes:
    """The pickle torch.save makes of n models shaped as `model` (one model's tensors, [...])."""
    content, keys = {}, iter(range(n * len(model)))
    for i in range(n):
        content[f"client{i + 1}"] = {name: _Tensor(_Storage(str(next(keys)), p.dtype, p.numel()), tuple(p.shape))
                                     for name, p in model.items()}
    out = io.BytesIO()
    _Pickler(out, protocol=torch.serialization.DEFAULT_PROTOCOL).dump(content)
    return out.getvalue()


def write(path: Path | str, n: int, take: Callable[[torch.Tensor], Params], budget: int = 2**26) -> None:
    """Write the models of clients 0..n-1 to `path`, read with `take(ids)` (their models [len(ids), ...])
    as many clients at a time as fit `budget` bytes: one chunk is in memory at a time, so the peak
    grows by about `budget` (and one client's model) whatever n is."""
    model = {name: p[0] for name, p in take(torch.zeros(1, dtype=torch.long)).items()}
    step = max(1, budget // max(1, sum(p.nbytes for p in model.values())))
    data = skeleton(n, model)
    key = 0
    with torch.serialization._open_zipfile_writer(str(path)) as archive:
        archive.write_record("data.pkl", data, len(data))
        archive.write_record(".format_version", "1", 1)
        alignment = str(torch.serialization._get_storage_alignment())
        archive.write_record(".storage_alignment", alignment, len(alignment))
        archive.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        for lo in range(0, n, step):
            ids = torch.arange(lo, min(n, lo + step))
            chunk = take(ids)
            for k in range(len(ids)):
                for name in model:
                    # written from the row's own bytes (a storage handed to the writer would be
                    # its whole chunk's, and kept alive until the file is closed)
                    p = chunk[name][k].detach().to(model[name].dtype).contiguous()
                    archive.write_record(f"data/{key}", p.data_ptr(), p.nbytes)
                    key += 1
            del chunk, p  # (p may be a view of it) before the next is read
