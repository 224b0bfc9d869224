"""Everything that can be known before training is refused before the run directory exists: wrong
types, counts past their bounds, profiles that do not fit the images, runs that do not fit in
memory, names that are paths, config files that are not files. Each with exit 2 and a message
naming the key, the value and the fix."""

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import CONFIGS, invoke
from fedbridge import bounds
from fedbridge.data.datasets import Dataset
from fedbridge.errors import ConfigError
from fedbridge.experiment import load_experiment

# trains in well under a second, so a check that wrongly lets a case through fails fast
SMALL = ["data.name=digits", "partition.sizes=[60, 60]", "train.rounds=1", "baselines=[]"]


def small(*overrides: str) -> list[str]:
    """SMALL and `overrides` as --set options."""
    return [a for s in [*SMALL, *overrides] for a in ("--set", s)]


def refused(tmp_path: Path, *overrides: str, config: Path = CONFIGS / "seed.toml") -> str:
    """Run `config` with SMALL and `overrides`; assert exit 2 and no run directory; the message."""
    out = tmp_path / "run"
    result = invoke("run", config, *small(*overrides), "--out", out)
    assert result.exit_code == 2, result.output
    assert not out.exists()
    return result.output


@pytest.mark.parametrize("value, expected", [
    ("true", "train.rounds: Input should be a valid integer (got True)"),
    ('"2"', "train.rounds: Input should be a valid integer (got '2')"),
    ("2.0", "train.rounds: Input should be a valid integer (got 2.0)"),
    ("1e9", "train.rounds: Input should be a valid integer (got 1000000000.0)"),
    ("1000000000", "train.rounds: Input should be less than or equal to 100000 (got 1000000000)"),
])
def test_rounds_take_only_an_integer_within_its_bound(tmp_path, value, expected):
    assert expected in refused(tmp_path, f"train.rounds={value}")


def test_no_string_becomes_a_bool():
    with pytest.raises(ConfigError, match=r"eval.cross_clients: Input should be a valid boolean \(got 'yes'\)"):
        load_experiment(CONFIGS / "seed.toml", ['eval.cross_clients="yes"'])


def test_what_must_stay_loose_still_validates():
    exp, _ = load_experiment(CONFIGS / "seed.toml", ["train.lr=1", 'data.dir="some/folder"', 'clients.0.profile="clean"'])
    assert exp.train.lr == 1.0 and exp.data.dir == Path("some/folder") and exp.profiles[0].name == "clean"


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=100000000", "train.batch_size: Input should be less than or equal to 1000000"),
    ("train.local_epochs=1000000000", "train.local_epochs: Input should be less than or equal to 10000"),
    ("seeds=1000000", "seeds: Input should be less than or equal to 1000"),
    ("clients.0.count=1000001", "clients.0.count: Input should be less than or equal to 1000000"),
    ('clients.1.profile={name="blur", sigma=1e30}', "blur: sigma=1e+30 is not allowed; allowed: sigma > 0 and <= 5.59241e+06"),
    ('clients.1.profile={name="occlusion", size=100}',
     "clients.1.profile.size = 100: an occlusion square of 100x100 does not fit in the 8x8 images of digits; "
     "choose a size of at most 8"),
])
def test_oversize_settings_are_refused_before_the_run_directory(tmp_path, override, expected):
    assert expected in refused(tmp_path, override)


def test_more_clients_in_all_than_the_bound_are_refused(tmp_path):
    output = refused(tmp_path, 'clients=[{count=600000}, {count=600000}]', "partition={name='iid'}")
    assert "the clients groups add up to 1,200,000 clients; at most 1,000,000" in output


@pytest.mark.parametrize("override, key, part", [
    # within the bounds, beyond any memory: 10,000 epochs' schedule of a batch of 1,000,000 slots
    ("train.local_epochs=10000", "train.local_epochs = 10000", "the batch schedule of 10,000 steps"),
    # plain SGD on an MLP multiplies a block of steps' inputs with each other: (1,000,000 rows)^2
    ("train.optimizer='sgd'", "train.batch_size = 1000000", "plain SGD's Gram matrix of 1,000,000 x 1,000,000"),
    ('clients.1.profile={name="blur", sigma=5e6}', "clients.1.profile.sigma = 5000000.0", "blurring a client of clients.1"),
])
def test_runs_that_cannot_fit_in_memory_are_refused_with_the_estimate(tmp_path, monkeypatch, override, key, part):
    monkeypatch.setattr(bounds, "machine_memory", lambda: 16 * 2**30)
    output = refused(tmp_path, "train.batch_size=1000000", override)
    assert f"{key}: this run needs about" in output and "more than this machine's 16.0 GiB" in output
    assert part in output and "lower " in output


def test_a_batch_larger_than_the_data_is_fine_where_it_fits(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", CONFIGS / "seed.toml", *small("train.batch_size=1000"), "--out", out, "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_fits_a_small_machine(path):
    exp, _ = load_experiment(path, ["seeds=3"])
    mnist = Dataset("mnist", np.zeros((60000, 28, 28), np.uint8), np.zeros(60000, np.int64),
                    np.zeros((10000, 28, 28), np.uint8), np.zeros(10000, np.int64), source="zeros")
    needs = bounds.memory_needs(exp, mnist, (1, 28, 28))
    assert sum(n.bytes for n in needs) < 2**30, needs


@pytest.mark.parametrize("name, expected", [
    ("../../escape", "it holds a path separator or '..'"),
    ("/tmp/anywhere", "it holds a path separator or '..'"),
    ("a\\\\b", "it holds a path separator or '..'"),
    ("x" * 5000, "it is 5,000 characters, 5,000 bytes as UTF-8; at most 100 characters and 200 bytes"),
    ("\u00e9" * 100, None),  # 100 characters, 200 bytes: the longest allowed
    ("\U0001f600" * 60, "it is 60 characters, 240 bytes as UTF-8; at most 100 characters and 200 bytes"),
    ("a\\u0000b", "it holds the control character '\\x00'"),
    ("a\\nb", "it holds the control character '\\n'"),
    ("", "it is empty or blank"),
])
def test_name_is_one_file_name(tmp_path, name, expected):
    config = tmp_path / "named.toml"
    text = (CONFIGS / "seed.toml").read_text().replace('name = "seed"', f'name = "{name}"')
    config.write_text(text)
    assert tomllib.loads(text)["name"] != "seed"
    if expected is None:
        load_experiment(config)
        return
    output = refused(tmp_path, config=config)
    assert f"name: {expected}" in output and "use --out DIR" in output


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_config_files_that_are_not_files(tmp_path, kind):
    path = {"fifo": tmp_path / "config.toml", "/dev/zero": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    elif not path.exists():
        pytest.skip(f"{path} does not exist here")
    result = invoke("run", path, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    what = {"fifo": "a named pipe (FIFO)", "/dev/zero": "a character device", "directory": "a directory"}[kind]
    assert f"config file {path} is {what}, not a file; give a TOML file" in result.output
    assert not (tmp_path / "run").exists()


def test_a_config_file_larger_than_a_config_is_refused(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text((CONFIGS / "seed.toml").read_text() + "#" * 2**20)
    result = invoke("run", big, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "is larger than 1 MiB, which no config is" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expected", [
    ("partition={alpha=1.0}", "partition.name is missing; choose one of iid, dirichlet, shards, quantity, sizes"),
    ('partition.name="zipf"', "partition.name = 'zipf' is unknown; choose one of iid, dirichlet, shards, quantity, sizes"),
    ('strategy={name="fedsgd"}', "strategy.name = 'fedsgd' is unknown; choose one of fedavg, fedavgm, fedadam"),
])
def test_a_missing_or_unknown_name_lists_the_allowed_ones(tmp_path, override, expected):
    output = refused(tmp_path, override)
    assert expected in output and "Unable to extract tag" not in output


def test_a_set_value_nested_too_deeply_is_refused(tmp_path):
    assert "nested too deeply" in refused(tmp_path, "train.rounds=" + "[" * 5000)


def test_a_sweep_checks_every_cell_before_its_directory_exists(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep", CONFIGS / "seed.toml", "--grid", "clients.1.profile.size=4,100", "--seeds", "1",
                    *small('clients.1.profile={name="occlusion", size=4}'),
                    "--out", out)
    assert result.exit_code == 2, result.output
    assert "grid cell clients.1.profile.size=100: clients.1.profile.size = 100: an occlusion square" in result.output
    assert not out.exists()


def test_a_sweep_takes_no_more_seeds_than_a_run(tmp_path):
    result = invoke("sweep", CONFIGS / "seed.toml", "--grid", "train.rounds=1,2", "--seeds", "1000000",
                    *small(), "--out", tmp_path / "sweep")
    assert result.exit_code == 2 and "--seeds 1000000: at most 1,000 seeds a cell" in result.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("strategy, baselines, cross, low, high", [
    ("scaffold", [], "true", 0.5, 1.5), ("scaffold", ["local"], "true", 8, 9), ("scaffold", ["local"], "false", 0.5, 1.5),
    ("ditto", [], "false", 0.5, 1.5), ("ditto", [], "true", 8, 9)])
def test_a_10000_client_run_counts_its_store_not_every_clients_rows(strategy, baselines, cross, low, high):
    # the 2NN's 199,210 weights: 8 GB of control variates (or Ditto's personal models) for 10,000
    # clients, in files but for the 100 clients a round changes; the local baseline's and Ditto's
    # models are saved from their store a chunk at a time (weights_file), but scoring each on every
    # client's test data (eval.cross_clients) takes them all, 8 GB
    exp, _ = load_experiment(CONFIGS / "seed.toml", [
        "model=\"2nn\"", "partition={name=\"iid\", samples_per_client=6}", "clients=[{count=10000}]",
        f"strategy={{name=\"{strategy}\"}}", "train.optimizer=\"sgd\"", "train.client_fraction=0.01",
        f"baselines={baselines}", f"eval.cross_clients={cross}"])
    mnist = Dataset("mnist", np.zeros((60000, 28, 28), np.uint8), np.zeros(60000, np.int64),
                    np.zeros((10000, 28, 28), np.uint8), np.zeros(10000, np.int64), source="zeros")
    assert low * 2**30 < sum(n.bytes for n in bounds.memory_needs(exp, mnist, (1, 28, 28))) < high * 2**30
