"""What a ServerApp leaves in its out-dir, and how `fedbridge deploy` reads it back while it runs.

`connected` once every client's node has answered; `timings.json` (where each step's time went); one `round-NNNN.json` (metrics and diagnostics records) and
`round-NNNN.pt` (server state) per evaluated round; then `end.json` saying how the run ended and
which clients were left out of which rounds. Each file is written whole (temp file + rename), the
weights before the records, so a round is complete as soon as its records exist.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedbridge.client_state import checkpointed, reopened
from fedbridge.files import atomic_write
from fedbridge.strategies.api import ServerState

END = "end.json"
CONNECTED = "connected"
TIMINGS = "timings.json"
RESUME = "resume.pt"  # the state a resumed run continues from (written by `fedbridge deploy --resume`)


def write_connected(out: Path) -> None:
    atomic_write(out / CONNECTED, "")


def connected(out: Path) -> bool:
    """Whether the ServerApp has every client's node; until then, each node that exits stops the run."""
    return (out / CONNECTED).exists()


def _save_state(path: Path, out: Path, round_: int, state: ServerState, **more) -> None:
    """The state with its per-client stores as client_state.checkpointed writes them (a deployed
    strategy's server holds stand-ins of them: engines/flower/personal.py)."""
    checkpointed(state.extra, round_, out, lambda extra: atomic_write(
        path, lambda tmp: torch.save({**more, "params": state.params, "extra": extra}, tmp)))


def write_round(out: Path, round_: int, records: list[dict], diagnostics: list[dict], state: ServerState) -> None:
    _save_state(out / f"round-{round_:04d}.pt", out, round_, state)
    atomic_write(out / f"round-{round_:04d}.json", json.dumps({"metrics": records, "diagnostics": diagnostics}))


def write_resume(out: Path, round_: int, state: ServerState) -> None:
    _save_state(out / RESUME, out, round_, state, round=round_)


def read_resume(path: Path) -> tuple[int, ServerState]:
    saved = torch.load(path, weights_only=True)
    return int(saved["round"]), ServerState(saved["params"], reopened(saved["extra"], path.parent))


def write_timings(out: Path, timings: list[dict]) -> None:
    """Every step's wall time and each node's `seconds-*` (transport.Nodes.timings), for benchmarks.deploy."""
    atomic_write(out / TIMINGS, json.dumps(timings))


def read_timings(out: Path) -> list[dict]:
    path = out / TIMINGS
    return json.loads(path.read_text()) if path.exists() else []


def write_end(out: Path, ok: bool, message: str = "", left_out: list[dict] = ()) -> None:
    """`left_out`: {"round", "step", "client", "reason"} of each client missing from a round's step."""
    atomic_write(out / END, json.dumps({"ok": ok, "message": message, "left_out": list(left_out)}))


@dataclass
class Round:
    number: int
    records: list[dict]
    diagnostics: list[dict]  # since the previous evaluated round
    state: ServerState


def read_rounds(out: Path, after: int) -> list[Round]:
    """The complete rounds numbered above `after`, in order."""
    rounds = []
    for path in sorted(out.glob("round-*.json")):
        number = int(path.stem.removeprefix("round-"))
        if number > after:
            saved = torch.load(path.with_suffix(".pt"), weights_only=True)
            written = json.loads(path.read_text())
            state = ServerState(saved["params"], reopened(saved["extra"], out))
            rounds.append(Round(number, written["metrics"], written["diagnostics"], state))
    return rounds


def read_end(out: Path) -> dict | None:
    """{"ok", "message", "left_out"} once the ServerApp has finished, else None."""
    path = out / END
    return json.loads(path.read_text()) if path.exists() else None
