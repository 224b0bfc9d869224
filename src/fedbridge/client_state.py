"""Per-client state a strategy keeps between rounds (SCAFFOLD's control variates, Ditto's personal
models, FedPer's heads), sized to the machine: one row per client and parameter, read for the
round's sampled clients with `take(ids)` and written back with `put(ids, params)`.

While every client's rows fit in MEMORY_BUDGET they are tensors in memory. Beyond it they live in
one raw float file per parameter in the run directory (`client-state/`, laid out as numpy.memmap
reads it: [2n, ...]), and only the clients asked for are read, so 10,000 clients of the 2NN (8 GB
of control variates) run in the memory of a round. The rows are read and written with positional
reads and writes (os.preadv/os.pwrite) rather than through a mapping: a mapping's pages count in
the process's RSS while it lives, and writing 100 rows of the 2NN (80 MB) into a sparse file took
0.38 s of CPU through numpy.memmap against 0.034 s with pwrite, reading them 0.098 against 0.060 s
(docs/performance.md, "Per-client state").
A fixed budget rather than one derived from free RAM: where the rows live never changes a result,
and a fixed budget keeps a run's memory the same on a quiet and on a busy machine.

A client never written reads as the state's `default` (zeros, the initial model), so the files
start sparse and cost only what clients wrote. Each client has two slots in the files: `put`
writes the one the last checkpoint does not point at, and a checkpoint (`checkpointed`) syncs the
files and then saves which slot is each client's, so a crash at any point leaves the checkpoint's
rows untouched on disk and `--resume` continues from exactly them.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedbridge.optim import Params

MEMORY_BUDGET = 2**30  # bytes of per-client rows kept in memory; a larger state goes to files
FOLDER = "client-state"  # in the run directory

# where a state too large for memory writes its files; the study points it into the run directory
# for each pair it trains, so a strategy's init(initial, n_clients) needs no path of its own
_folder: ContextVar[Path | None] = ContextVar("client_state_folder", default=None)


@contextlib.contextmanager
def files_in(folder: Path) -> Iterator[None]:
    """States made inside this block that do not fit in memory keep their files under `folder`."""
    token = _folder.set(Path(folder))
    try:
        yield
    finally:
        _folder.reset(token)


@dataclass(eq=False)
class ClientState:
    """For each parameter name, one row per client: in memory (`rows`), or in files (`folder`)."""

    n: int
    default: Params  # [1, ...] what a client never written reads as
    rows: Params | None = None  # [n, ...] when in memory
    folder: Path | None = None  # one raw file per name when not, of two slots [2n, ...] per client
    slots: torch.Tensor | None = None  # [n] int8: each client's slot at the last checkpoint, -1 never written
    pending: frozenset[int] = frozenset()  # clients put since, whose rows are in their other slot
    temporary: object = None  # the TemporaryDirectory holding `folder` when no run directory was given

    def take(self, ids: torch.Tensor) -> Params:
        """The rows [K, ...] of clients `ids` (0-based), as new tensors."""
        if self.rows is not None:
            return {n: p[ids] for n, p in self.rows.items()}
        wanted = ids.tolist()
        out = {n: d.expand(len(wanted), *d.shape[1:]).clone() for n, d in self.default.items()}
        stored = [(k, 2 * wanted[k] + s) for k, s in enumerate(self._slots(wanted)) if s >= 0]
        for name, values in out.items():
            size = values[0].numel() * values.element_size()
            with open(self.folder / name, "rb") as f:
                for k, row in stored:  # reshape: a 0-d row (BatchNorm's batch count) has no byte view
                    os.preadv(f.fileno(), [values[k].reshape(-1).numpy().view(np.uint8)], row * size)
        return out

    def put(self, ids: torch.Tensor, params: Params) -> "ClientState":
        """The state with the rows of clients `ids` set to `params` [K, ...]. In memory the rows are
        copied, as a round's state was before there was a store, and this state is left as it was;
        in files the rows go to each client's other slot, where an earlier round's state that had
        also put that client since the checkpoint would read them too."""
        if self.rows is not None:
            rows = {n: p.clone() for n, p in self.rows.items()}
            for n, p in rows.items():
                p[ids] = params[n]
            return replace(self, rows=rows)
        wanted = ids.tolist()
        rows = [2 * i + s for i, s in zip(wanted, self._slots(wanted, writing=True))]
        for name in self.default:
            values = params[name].detach().contiguous()
            size = values[0].numel() * values.element_size()
            with open(self.folder / name, "rb+") as f:
                for k, row in enumerate(rows):
                    os.pwrite(f.fileno(), values[k].reshape(-1).numpy().view(np.uint8), row * size)
        return replace(self, pending=self.pending | set(wanted))

    def _slots(self, ids: list[int], writing: bool = False) -> list[int]:
        """Each client's slot to read (the checkpoint's, or the other one once put since) or to write."""
        def slot(client: int, at_checkpoint: int) -> int:
            if writing or client in self.pending:
                return 1 - at_checkpoint if at_checkpoint >= 0 else 0
            return at_checkpoint  # -1: never written

        return [slot(i, s) for i, s in zip(ids, self.slots[ids].tolist())]


@dataclass(frozen=True)
class Joined:
    """Each client's model: `shared` [1, ...] for the parameters every client has (FedPer's body),
    its own rows of `own` for the rest (its head), in the order of `shared`'s names."""

    shared: Params
    own: ClientState

    @property
    def n(self) -> int:
        return self.own.n

    def take(self, ids: torch.Tensor) -> Params:
        rows = self.own.take(ids)
        return {n: rows[n] if n in rows else p.expand(len(ids), *p.shape[1:]).clone() for n, p in self.shared.items()}


Models = Params | ClientState | Joined  # what clients are scored with: [1 or n, ...], or rows by client


def every_row(models: Models) -> Params:
    """The models [1 or n, ...] as tensors."""
    return models if isinstance(models, dict) else models.take(torch.arange(models.n))


def create(name: str, default: Params, n: int) -> ClientState:
    """A state of `n` clients whose rows all read as `default` [1, ...]; `name` tells its files apart
    from another state's of the same run and pair (e.g. "control")."""
    row_bytes = sum(p[0].numel() * p.element_size() for p in default.values())
    default = {k: p.detach().clone() for k, p in default.items()}
    if n * row_bytes <= MEMORY_BUDGET:
        return ClientState(n, default, rows={k: p.expand(n, *p.shape[1:]).clone() for k, p in default.items()})
    temporary = None
    if (parent := _folder.get()) is None:
        temporary = tempfile.TemporaryDirectory(prefix="fedbridge-client-state-")
        parent = Path(temporary.name)
    folder = parent / name
    shutil.rmtree(folder, ignore_errors=True)  # a pair trained again from round 0 starts clean
    folder.mkdir(parents=True)
    for k, p in default.items():
        with open(folder / k, "wb") as f:
            f.truncate(2 * n * p[0].numel() * p.element_size())  # sparse: nothing is written until a client is
    return ClientState(n, default, folder=folder, slots=torch.full((n,), -1, dtype=torch.int8), temporary=temporary)


def in_memory(state: ClientState | Params) -> ClientState:
    """A state from rows [n, ...] already in memory (a checkpoint made before the state had files)."""
    if isinstance(state, ClientState):
        return state
    n = next(iter(state.values())).shape[0]
    return ClientState(n, {k: p[:1].clone() for k, p in state.items()}, rows=state)


def checkpointed(extra: dict, round_: int, run: Path, save: Callable[[dict], None]) -> None:
    """Call `save(extra)` with each ClientState in `extra` as what `reopened` makes it again: in memory,
    its rows; in files, where they are and which slot is each client's. The files are synced first,
    so the slots the checkpoint names hold their rows; until `save` has written it, the last
    checkpoint's slots are untouched."""
    plain, on_disk = {}, []
    for key, value in extra.items():
        if not isinstance(value, ClientState):
            plain[key] = value
        elif value.rows is not None:
            plain[key] = {"client_state": "memory", "rows": value.rows, "default": value.default}
        else:
            for name in value.default:
                with open(value.folder / name, "rb+") as f:
                    os.fsync(f.fileno())
            slots = value.slots.clone()
            if value.pending:
                ids = sorted(value.pending)
                slots[ids] = torch.tensor(value._slots(ids), dtype=torch.int8)
            plain[key] = {"client_state": "files", "folder": str(value.folder.relative_to(run)), "round": round_,
                          "default": value.default, "slots": slots}
            on_disk.append((value, slots))
    save(plain)
    for value, slots in on_disk:  # the checkpoint's slots are now the ones to keep
        value.slots, value.pending = slots, frozenset()


def reopened(extra: dict, run: Path) -> dict:
    """`extra` of a checkpoint with its states made again."""
    out = {}
    for key, value in extra.items():
        kind = value.get("client_state") if isinstance(value, dict) else None
        if kind == "memory":
            out[key] = ClientState(next(iter(value["rows"].values())).shape[0], value["default"], rows=value["rows"])
        elif kind == "files":
            out[key] = ClientState(len(value["slots"]), value["default"], folder=Path(run) / value["folder"],
                                   slots=value["slots"].clone())
        else:
            out[key] = value
    return out


def remove(run: Path) -> None:
    """The run's state files, once no checkpoint needs them."""
    shutil.rmtree(Path(run) / FOLDER, ignore_errors=True)
