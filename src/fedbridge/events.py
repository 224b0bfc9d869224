"""`[log] tensorboard = true`: a run's metrics as TensorBoard event files, one folder per seed,
method, client and test set (RUN/tensorboard/seed0/fedavg/client1/own; another client's test data
is client-2), with the scalars `accuracy` and `loss` at each evaluated round.

A pair's files are written when it has trained all its rounds, from metrics.jsonl (so a resumed
pair's are whole, and written once). TensorBoard is an optional extra: asked for without it, the
run stops before its run directory exists.
"""

import importlib.util
import shutil
from itertools import groupby
from pathlib import Path

from fedbridge.errors import ConfigError

FOLDER = "tensorboard"


def check(wanted: bool) -> None:
    """Refuse `[log] tensorboard = true` where the tensorboard package is not installed."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard = true, but the tensorboard package is not installed; install it with "
                          "pip install 'fedbridge[tensorboard]' (or pip install tensorboard), or set log.tensorboard = false")


def folder(run: Path, seed: int, method: str, client: int, test_set: str) -> Path:
    return Path(run) / FOLDER / f"seed{seed}" / method / f"client{client}" / test_set.replace(":", "-")


def write(run: Path, seed: int, method: str, records: list[dict]) -> None:
    """The event files of one (seed, method) from its metrics records, replacing any written before."""
    from torch.utils.tensorboard import SummaryWriter  # the optional extra, imported only when asked for

    mine = sorted((r for r in records if r["seed"] == seed and r["method"] == method),
                  key=lambda r: (r["client"], r["test_set"], r["round"]))
    shutil.rmtree(Path(run) / FOLDER / f"seed{seed}" / method, ignore_errors=True)
    for (client, test_set), rows in groupby(mine, key=lambda r: (r["client"], r["test_set"])):
        writer = SummaryWriter(log_dir=str(folder(run, seed, method, client, test_set)))
        try:
            for r in rows:
                writer.add_scalar("accuracy", r["accuracy"], r["round"])
                writer.add_scalar("loss", r["loss"], r["round"])
        finally:
            writer.close()
