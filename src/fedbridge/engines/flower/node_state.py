"""A client's own state on its SuperNode (personal.py): its rows of the strategy's per-client
entries (control variate, head, personal model, normalisation layers), kept on the node's disk so
that a restarted SuperNode continues it and a resumed deployment finds the round it resumes from.

One folder per experiment, seed and client in the node's cache folder, one file per round the
client trained (`round-NNNN.pt`, the state after that round), written whole (temp file + rename).
`run.json` says which Flower run the folder serves and from which round that run's server began:
a run it has not seen (a new deployment begins at round 1, `deploy --resume` after its last round)
drops the files of the rounds from there on, which belong to an abandoned run. The node keeps the
newest file at or before the server's last checkpoint and every later one, so it can go back to
where any resume would start.

A node whose files are gone (a new machine, a wiped cache) starts its client's entries again from
the strategy's `init`, as a client never sampled does; it reports the round its state came from
(`state-round`), and the server warns when that is older than the client's last training.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedbridge.client_state import checkpointed, reopened
from fedbridge.data.cache import cache_dir
from fedbridge.files import atomic_write


@dataclass(frozen=True)
class Store:
    folder: Path

    def path(self, round_: int) -> Path:
        return self.folder / f"round-{round_:04d}.pt"

    def rounds(self) -> list[int]:
        return sorted(int(p.stem.removeprefix("round-")) for p in self.folder.glob("round-*.pt"))


def store(experiment: str, seed: int, client: int) -> Store:
    key = hashlib.sha256(f"{experiment}|{seed}|{client}".encode()).hexdigest()[:24]
    return Store(cache_dir() / "flower-node" / f"state-client{client}-{key}")


def entered(s: Store, run: int, first: int) -> None:
    """Note that run `run`, whose server began at round `first`, now uses the store; a run not seen
    before drops the rounds from `first` on."""
    meta, mine = s.folder / "run.json", {"run": run, "first": first}
    if meta.exists() and json.loads(meta.read_text()) == mine:
        return
    s.folder.mkdir(parents=True, exist_ok=True)
    for r in s.rounds():
        if r >= first:
            s.path(r).unlink(missing_ok=True)
    atomic_write(meta, json.dumps(mine))


def latest(s: Store, upto: int) -> tuple[int, dict | None]:
    """The newest state at or before round `upto` and its round; (0, None) if there is none."""
    found = [r for r in s.rounds() if r <= upto]
    if not found:
        return 0, None
    return found[-1], reopened(torch.load(s.path(found[-1]), weights_only=True), s.folder)


def save(s: Store, round_: int, entries: dict, checkpoint: int) -> None:
    """The client's entries after round `round_`; `checkpoint`: the server's last checkpointed round."""
    s.folder.mkdir(parents=True, exist_ok=True)
    checkpointed(entries, round_, s.folder, lambda plain: atomic_write(s.path(round_), lambda tmp: torch.save(plain, tmp)))
    older = [r for r in s.rounds() if r <= checkpoint]
    for r in older[:-1]:  # the newest of these is where a resume would start
        s.path(r).unlink(missing_ok=True)
