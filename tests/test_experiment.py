from pathlib import Path

import pytest

from fedbridge.errors import ConfigError
from fedbridge.data.partitions import Sizes
from fedbridge.experiment import load_experiment, parse_override

CONFIGS = Path(__file__).parent.parent / "configs"


def test_seed_config_is_the_origin_study():
    exp, _ = load_experiment(CONFIGS / "seed.toml")
    assert exp.n_clients == 2
    assert isinstance(exp.partition, Sizes) and exp.partition.sizes == [30000, 30000]
    assert [p.label for p in exp.profiles] == ["clean", "gaussian(sigma=0.2)"]
    assert (exp.train.optimizer, exp.train.lr, exp.train.batch_size, exp.train.rounds) == ("adam", 1e-3, 64, 15)
    assert [m.name for m in exp.methods] == ["local", "fedavg", "pooled"]


def test_overrides_reach_nested_keys_and_list_items():
    exp, _ = load_experiment(
        CONFIGS / "seed.toml",
        ["train.rounds=3", "clients.1.profile.sigma=0.5", "data.name=fashion-mnist", "seeds=2"],
    )
    assert exp.train.rounds == 3
    assert exp.profiles[1].params == {"sigma": 0.5}
    assert exp.data.name == "fashion-mnist"
    assert exp.seeds == 2


def test_parse_override_reads_toml_values_and_falls_back_to_strings():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=fashion-mnist") == ("a", "fashion-mnist")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.rounds=0", "train.rounds: Input should be greater than or equal to 1 (got 0)"),
        ("train.lr=-1", "train.lr"),
        ("train.optimizer=rmsprop", "'sgd' or 'adam'"),
        ("train.epochs=3", "train.epochs: unknown key"),
        ("model=resnet", "model"),
        ("clients.1.profile.sigma=-0.1", "sigma"),
        ("clients.1.profile.name=snow", "snow"),
        ("partition.sizes=[30000]", "partition.sizes has 1 entries but the clients groups add up to 2"),
        ("partition.name=zipf", "partition"),
        ("data.name=cifar", "data.name"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as e:
        load_experiment(CONFIGS / "seed.toml", [override])
    assert expected in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("override", ["clients.5.count=1", "train.rounds.x=1", "novalue"])
def test_bad_override_paths(override):
    with pytest.raises(ConfigError):
        load_experiment(CONFIGS / "seed.toml", [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(bad)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_validates(path):
    load_experiment(path)
