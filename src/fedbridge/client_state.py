"""Per-client state a strategy keeps between rounds (SCAFFOLD's control variates, Ditto's personal
models, FedPer's heads), sized to the machine: one row per client and parameter, read for the
round's sampled clients with `take(ids)` and written back with `put(ids, params)`.

While every client's rows fit in MEMORY_BUDGET they are tensors in memory. Beyond it they live in
one file per parameter in the run directory (`client-state/`), read through numpy.memmap for the
clients asked for, so 10,000 clients of the 2NN (8 GB of control variates) run in the memory of a
round. A fixed budget rather than one derived from free RAM: where the rows live never changes a
result, and a fixed budget keeps a run's memory the same on a quiet and on a busy machine.

A client never written reads as the state's `default` (zeros, the initial model), so the files
start sparse and cost only what clients wrote. Rows put since the last checkpoint are kept in
memory and reach the files only at a checkpoint (`checkpointed`): first as a journal, then the
checkpoint, then folded into the files, so a crash at any point leaves files that, with the
journal, are exactly the state of the checkpoint on disk, and `--resume` continues from it.
"""

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedbridge.files import atomic_write
from fedbridge.optim import Params

MEMORY_BUDGET = 2**30  # bytes of per-client rows kept in memory; a larger state goes to files
FOLDER = "client-state"  # in the run directory
_JOURNAL = "journal.pt"

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
    folder: Path | None = None  # one raw file per name when not
    written: torch.Tensor | None = None  # [n] bool: the clients whose rows the files hold
    changed: dict[int, Params] = field(default_factory=dict)  # put since the last checkpoint
    temporary: object = None  # the TemporaryDirectory holding `folder` when no run directory was given

    def take(self, ids: torch.Tensor) -> Params:
        """The rows [K, ...] of clients `ids` (0-based), as new tensors."""
        if self.rows is not None:
            return {n: p[ids] for n, p in self.rows.items()}
        wanted = ids.tolist()
        out = {n: d.expand(len(wanted), *d.shape[1:]).clone() for n, d in self.default.items()}
        stored = [k for k, i in enumerate(wanted) if self.written[i] and i not in self.changed]
        if stored:
            where = np.asarray([wanted[k] for k in stored])
            for name, values in out.items():
                values[stored] = torch.from_numpy(np.ascontiguousarray(self._map(name, "r")[where]))
        for k, i in enumerate(wanted):
            if i in self.changed:
                for name, values in out.items():
                    values[k] = self.changed[i][name]
        return out

    def put(self, ids: torch.Tensor, params: Params) -> "ClientState":
        """The state with the rows of clients `ids` set to `params` [K, ...]; this one is left as it
        was, as a round's state is (the rows in memory are copied, as before there was a store; the
        files are shared, and change only at a checkpoint)."""
        if self.rows is not None:
            rows = {n: p.clone() for n, p in self.rows.items()}
            for n, p in rows.items():
                p[ids] = params[n]
            return replace(self, rows=rows)
        changed = dict(self.changed)
        for k, i in enumerate(ids.tolist()):
            changed[i] = {n: params[n][k].clone() for n in self.default}
        return replace(self, changed=changed)

    def _map(self, name: str, mode: str) -> np.memmap:
        # mapped per call, not held: pages of a mapping count in the process's RSS while it lives
        d = self.default[name]
        return np.memmap(self.folder / name, dtype=d.numpy().dtype, mode=mode, shape=(self.n, *d.shape[1:]))

    def _write(self, ids: list[int], rows: Params) -> None:
        where = np.asarray(ids)
        for name, values in rows.items():
            mapped = self._map(name, "r+")
            mapped[where] = values.numpy()
            mapped.flush()
            del mapped
        self.written[ids] = True


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
    """The models [1 or n, ...] as tensors (to save them)."""
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
            f.truncate(n * p[0].numel() * p.element_size())  # sparse: nothing is written until a client is
    return ClientState(n, default, folder=folder, written=torch.zeros(n, dtype=torch.bool), temporary=temporary)


def in_memory(state: ClientState | Params) -> ClientState:
    """A state from rows [n, ...] already in memory (a checkpoint made before the state had files)."""
    if isinstance(state, ClientState):
        return state
    n = next(iter(state.values())).shape[0]
    return ClientState(n, {k: p[:1].clone() for k, p in state.items()}, rows=state)


def checkpointed(extra: dict, round_: int, run: Path, save: Callable[[dict], None]) -> None:
    """Call `save(extra)` with each ClientState in `extra` as what `reopened` makes it again: in memory,
    its rows; in files, where they are. Rows changed since the last checkpoint are journaled before
    `save` and written into the files after it: a crash before `save` leaves the files of the last
    checkpoint, a crash after it the journal that `reopened` finishes writing. The states in `extra`
    then read those rows from the files (an earlier round's state kept in memory sees them too)."""
    plain, on_disk = {}, []
    for key, value in extra.items():
        if not isinstance(value, ClientState):
            plain[key] = value
        elif value.rows is not None:
            plain[key] = {"client_state": "memory", "rows": value.rows, "default": value.default}
        else:
            ids = sorted(value.changed)
            rows = {n: torch.stack([value.changed[i][n] for i in ids]) for n in value.default} if ids else {}
            if ids:
                atomic_write(value.folder / _JOURNAL, lambda tmp: torch.save(
                    {"round": round_, "ids": torch.tensor(ids), "rows": rows}, tmp))
            written = value.written.clone()
            written[ids] = True
            plain[key] = {"client_state": "files", "folder": str(value.folder.relative_to(run)), "round": round_,
                          "default": value.default, "written": written}
            on_disk.append((value, ids, rows))
    save(plain)
    for value, ids, rows in on_disk:
        if ids:
            value._write(ids, rows)
            (value.folder / _JOURNAL).unlink()
        value.changed.clear()


def reopened(extra: dict, run: Path) -> dict:
    """`extra` of a checkpoint with its states made again, a journal of that checkpoint folded in."""
    out = {}
    for key, value in extra.items():
        kind = value.get("client_state") if isinstance(value, dict) else None
        if kind == "memory":
            out[key] = ClientState(next(iter(value["rows"].values())).shape[0], value["default"], rows=value["rows"])
        elif kind == "files":
            folder = Path(run) / value["folder"]
            state = ClientState(len(value["written"]), value["default"], folder=folder, written=value["written"].clone())
            journal = folder / _JOURNAL
            if journal.exists():
                content = torch.load(journal, weights_only=True)
                if content["round"] == value["round"]:  # else a later round's, whose checkpoint was never saved
                    state._write(content["ids"].tolist(), content["rows"])
                journal.unlink()
            out[key] = state
        else:
            out[key] = value
    return out


def remove(run: Path) -> None:
    """The run's state files, once no checkpoint needs them."""
    shutil.rmtree(Path(run) / FOLDER, ignore_errors=True)
