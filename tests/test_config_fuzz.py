"""Fuzzing configs and --set values through the `fedbridge run` command, in process.

Whatever a config says, the command exits 0 (it ran) or 2 (refused, with a message), never with a
traceback; and a refused config leaves nothing behind, so the corrected re-run is never blocked.
The configs start from one that trains in well under a second (digits, two small clients, one
round, no baselines) and change a key or two, mostly to values that must be refused.
"""

import contextlib
import copy
import shutil

import pytest
import tomli_w
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conftest import invoke

BASE = {
    "name": "fuzz",
    "baselines": [],
    "data": {"name": "digits"},
    "partition": {"name": "sizes", "sizes": [60, 60]},
    "clients": [{"profile": "clean"}, {"profile": {"name": "gaussian", "sigma": 0.2}}],
    "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 16, "rounds": 1},
    "eval": {"cross_clients": False},
}

# every key the config has, and a few it has not; not the whole `data` table, whose default is MNIST
# (a download where it is not found)
KEYS = [
    "name", "seed", "seeds", "model", "test_fraction", "baselines", "data.name", "data.dir", "data.fallback",
    "partition", "partition.name", "partition.sizes", "partition.alpha", "partition.sizes.0", "clients",
    "clients.0.count", "clients.1.profile", "clients.1.profile.name", "clients.1.profile.sigma", "train",
    "train.optimizer", "train.lr", "train.momentum", "train.batch_size", "train.local_epochs", "train.rounds",
    "train.client_fraction", "strategy", "strategy.name", "strategy.mu", "strategy.epochs", "eval.every",
    "eval.cross_clients", "unknown", "train.unknown",
]

# no value here is a count that validates and then trains for long: 100,001, 10**7 and 2**63 - 1 are
# past the bound of every count (`seed` takes them, and trains as fast)
WORDS = st.sampled_from([
    "digits", "mnist-typo", "iid", "dirichlet", "sizes", "shards", "fedavg", "fedprox", "krum", "ditto", "finetune",
    "adam", "sgd", "mlp", "cnn", "clean", "blur", "occlusion", "gaussian", "local", "pooled", "yes", "true", "2",
    "1e9", "", "../../escape", "/abs", "a\x00b", "x" * 300, "é", "\n",
])
NUMBERS = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 100_001, 10**7, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
LEAVES = st.one_of(NUMBERS, WORDS)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["name", "sigma", "size", "x"]), inner, max_size=2)
    ),
    max_leaves=4,
)


def _set(tree: dict, dotted: str, value) -> None:
    """Put `value` at `dotted`, making tables on the way, replacing whatever was there."""
    *path, last = dotted.split(".")
    node = tree
    for key in path:
        child = node[int(key)] if isinstance(node, list) and key.isdigit() and int(key) < len(node) else None
        if child is None and isinstance(node, dict):
            child = node.setdefault(key, {})
        if not isinstance(child, (dict, list)):
            return
        node = child
    if isinstance(node, dict):
        node[last] = value
    elif last.isdigit() and int(last) < len(node):
        node[int(last)] = value


def _toml(tree: dict) -> str | None:
    try:
        return tomli_w.dumps(tree)
    except (TypeError, ValueError):  # a value TOML cannot hold (a list mixing tables and values, say)
        return None


# what follows --set KEY=: a value written as TOML, a table or text as a user might type it
RAW = st.one_of(
    st.one_of(LEAVES, st.lists(LEAVES, max_size=3)).map(lambda v: (_toml({"v": v}) or "").partition("= ")[2].strip()),
    st.sampled_from(['{name="blur", sigma=1e30}', '{name="occlusion", size=100}', "{}", '{name="zipf"}', "[[[[",
                     '"2"', "1e9", "[1, 2", "=", "'", '"""', "nan", "-inf", "0x10", "1_000"]),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """An empty working folder (nothing may appear in it) and a folder for the config files."""
    return tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("configs")


def _run_and_check(place, text: str, *sets: str) -> None:
    work, configs = place
    config = configs / "fuzz.toml"
    config.write_text(text)
    out = work / "run"
    args = ["run", config, *[a for s in sets for a in ("--set", s)], "--out", out, "--quiet"]
    with contextlib.chdir(work):  # a default runs/ folder would show up in the empty working folder
        result = invoke(*args)  # asserts that no traceback reached the user
    assert result.exit_code in (0, 2), result.output
    event(f"exit {result.exit_code}")  # the share that ran, in --hypothesis-show-statistics
    if result.exit_code == 2:
        assert result.output.startswith("error: "), result.output
        assert not out.exists(), f"refused, yet {out} was made:\n{result.output}"
    shutil.rmtree(out, ignore_errors=True)
    assert not any(work.iterdir()), f"something was written beside --out: {list(work.iterdir())}"


@settings(max_examples=30, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=2))
def test_changed_config_files_run_or_are_refused_cleanly(place, changes):
    tree = copy.deepcopy(BASE)
    for key, value in changes:
        _set(tree, key, value)
    text = _toml(tree)
    if text is not None:
        _run_and_check(place, text)


@settings(max_examples=25, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=8).filter(lambda k: k.split(".")[0].strip() != "data")),
       raw=RAW, cut=st.integers(0, 600))
def test_set_values_and_cut_files_run_or_are_refused_cleanly(place, key, raw, cut):
    # the file cut short at a random character (most cuts break the TOML or drop a needed table)
    _run_and_check(place, tomli_w.dumps(BASE)[:cut], f"{key}={raw}")
