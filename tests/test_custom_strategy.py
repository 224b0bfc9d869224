"""strategy.name = "custom": every example in docs/strategies.md runs; a rule or strategy gives
hand-checkable models; every bad rule is named with exit 2 (config) or 1 (run time), no traceback."""

import importlib
import re
import shutil
import sys
import textwrap

import pytest
import torch

import fedbridge
from conftest import CONFIGS, ROOT, invoke
from fedbridge import rounds
from fedbridge.engines.simulation import train
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import validate
from fedbridge.models import build_model
from fedbridge.strategies.api import ClientUpdates, Setup
from test_strategies_engine import _exp, _federation, _same

DOCS = (ROOT / "docs" / "strategies.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOCS, flags=re.S | re.M)


def doc_files() -> dict[str, str]:
    """The docs' example files, by name: the blocks whose first line is `# NAME.py` or `# NAME.toml`."""
    return {m[1]: block for block in blocks("python") + blocks("toml")
            if (m := re.match(r"# (?:\S*/)?(\w+\.(?:py|toml))\n", block))}


def _forget(folder) -> None:
    """Drop the modules imported from `folder`, so the next test's module of the same name is imported afresh."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """write(name, code): a module in tmp_path, which is on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, code: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        return name

    yield write
    _forget(tmp_path)


@pytest.fixture
def docs_folder(tmp_path, monkeypatch):
    """The working directory of the docs' examples: their files and a copy of configs/; not on sys.path,
    as for the `fedbridge` command run from there."""
    for name, text in doc_files().items():
        (tmp_path / name).write_text(text)
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    _forget(tmp_path)


def _run(strategy: dict, rounds_: int = 2, diagnostics: list | None = None):
    exp = _exp(strategy, rounds_)
    keep = (lambda r, recs, ds, state: diagnostics.extend(ds)) if diagnostics is not None else (lambda *a: None)
    return train(exp.method(exp.strategy.name), _federation(), exp, seed=0, on_round=keep)


MEAN = """
    import torch

    def mean(updates, weights):
        w = weights / weights.sum()
        return {n: (w.view(-1, *[1] * (x.dim() - 1)) * x).sum(0, keepdim=True) for n, x in updates.items()}

    def zeros(updates, weights):
        return {n: torch.zeros_like(x[:1]) for n, x in updates.items()}
"""


def test_a_rule_returning_the_weighted_mean_is_fedavg(write_module):
    write_module("meanrule", MEAN)
    assert _same(_run({"name": "custom", "rule": "meanrule:mean"}), _run({"name": "fedavg"}))


def test_a_rule_returning_zeros_leaves_the_model_at_its_initialisation(write_module):
    write_module("meanrule", MEAN)
    fed = _federation()
    initial = rounds.initial_model(build_model("mlp", fed.input_shape, fed.num_classes), seed=0)
    params = _run({"name": "custom", "rule": "meanrule:zeros"})
    assert all(torch.equal(params[n], initial[n]) for n in initial)


def test_the_docs_weighted_median_by_hand(write_module):
    write_module("myrules", doc_files()["myrules.py"])
    from myrules import weighted_median

    u = {"w": torch.tensor([[1.0, 7.0], [2.0, 5.0], [10.0, 6.0]])}
    assert weighted_median(u, torch.tensor([1.0, 1.0, 1.0]))["w"].tolist() == [[2.0, 6.0]]  # the plain median
    assert weighted_median(u, torch.tensor([1.0, 1.0, 5.0]))["w"].tolist() == [[10.0, 6.0]]  # client 3 holds most samples
    assert weighted_median(u, torch.tensor([5.0, 1.0, 1.0]))["w"].tolist() == [[1.0, 7.0]]


def test_the_docs_strategy_with_alpha_zero_is_fedavg_and_remembers_each_clients_loss(write_module):
    write_module("lossweights", doc_files()["lossweights.py"])
    write_module("plain", "from lossweights import loss_weighted\nfedavg_like = loss_weighted(alpha=0.0)\n")
    reported = []
    params = _run({"name": "custom", "strategy": "plain:fedavg_like"}, diagnostics=reported)
    assert _same(params, _run({"name": "fedavg"}))
    loss = {(d["round"], d["client"]): d["scores"] for d in reported}
    for client in (1, 2, 3):  # memory 0.5: round 2 remembers the mean of the two rounds' losses
        assert loss[1, client]["remembered_loss"] == loss[1, client]["loss"]
        expected = (loss[1, client]["loss"] + loss[2, client]["loss"]) / 2
        assert loss[2, client]["remembered_loss"] == pytest.approx(expected, rel=1e-6)


def test_the_docs_strategy_resumes_from_its_state(write_module):
    write_module("lossweights", doc_files()["lossweights.py"])
    fed, exp = _federation(), _exp({"name": "custom", "strategy": "lossweights:loss_weighted"}, rounds=3)
    method, states = exp.method("custom"), {}
    whole = train(method, fed, exp, seed=0, on_round=lambda r, recs, ds, state: states.update({r: state}))
    assert states[1].extra["loss"].isfinite().all()
    resumed = train(method, fed, exp, seed=0, resume=(1, states[1]))
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)


def test_the_docs_built_in_strategy_module_has_what_the_registry_needs(write_module):
    spec = importlib.import_module(write_module("weighted_median", doc_files()["weighted_median.py"])).SPEC
    config = spec.config(name="weighted_median")
    assert spec.titles == {"weighted_median": "weighted median"}
    assert "needs at least 3" in spec.check(config, Setup(2, 2, 1.0, "sgd", 0.0, 0.1))
    strategy = spec.build(config, Setup(3, 3, 1.0, "sgd", 0.0, 0.1))
    state = strategy.init({"w": torch.tensor([[1.0]])}, 3)
    trained = ClientUpdates(torch.arange(3), torch.tensor([1.0, 1.0, 5.0]), {"w": torch.tensor([[2.0], [3.0], [11.0]])},
                            torch.ones(3), torch.zeros(3))
    assert strategy.aggregate(state, trained)[0].params["w"].tolist() == [[11.0]]  # 1 + client 3's update of 10


def test_every_python_example_in_docs_strategies_md_runs(docs_folder, capsys):
    examples = [b for b in blocks("python") if not b.startswith("# ")]
    assert len(examples) == 2
    namespace: dict = {}
    for block in examples:
        exec(compile(block, "<example>", "exec"), namespace)
    assert isinstance(namespace["model"], torch.nn.Module)
    assert namespace["study"].summary["methods"] == ["local", "custom"]
    remembered = {d["client"]: d["scores"]["remembered_loss"] for d in namespace["last"]}
    assert max(remembered, key=remembered.get) == 3  # as the docs say: the noisy client
    assert "custom" in capsys.readouterr().out  # the pivot's column


def test_the_docs_config_runs_through_the_command_from_the_rules_folder(docs_folder):
    before = list(sys.path)
    result = invoke("run", "median.toml", "--out", docs_folder / "run")
    assert result.exit_code == 0, result.output
    assert "custom" in result.output
    assert sys.path == before  # the working directory was put there for the import only
    methods = fedbridge.open_run(docs_folder / "run").summary["methods"]
    assert methods == ["local", "custom"]


BAD_CONFIGS = [
    ({}, "strategy: give exactly one of strategy.rule"),
    ({"rule": "rules:mean", "strategy": "rules:made"}, "strategy.rule and strategy.strategy are both set"),
    ({"rule": "rules.mean"}, 'strategy.rule: write it as "package.module:function"'),
    ({"rule": "rules:"}, 'strategy.rule: write it as "package.module:function"'),
    ({"rule": "no_such_module:mean"}, "strategy.rule: cannot import module 'no_such_module': No module named "
                                      "'no_such_module'; looked in the working directory"),
    ({"rule": "broken:mean"}, "strategy.rule: importing module 'broken' raised ZeroDivisionError: division by zero"),
    ({"rule": "rules:median"}, "strategy.rule: module 'rules' ("),
    ({"rule": "rules:SIZE"}, "strategy.rule: rules:SIZE is of type int, not a function of (updates, weights)"),
    ({"strategy": "rules:SIZE"}, "strategy.strategy: rules:SIZE is of type int, neither a fedbridge.strategies.api.Strategy"),
    ({"strategy": "rules:mean"}, "strategy.strategy: rules:mean() raised TypeError"),
    ({"strategy": "rules:made"}, "strategy.strategy: rules:made() returned an object of type dict, not a fedbridge"),
]
RULES = """
    SIZE = 3

    def mean(updates, weights):
        return {n: x.mean(0, keepdim=True) for n, x in updates.items()}

    def made():
        return {}
"""


@pytest.mark.parametrize("strategy, message", BAD_CONFIGS)
def test_a_bad_custom_config_is_a_config_error_naming_the_key(write_module, strategy, message):
    write_module("rules", RULES)
    write_module("broken", "1 / 0\n")
    with pytest.raises(ConfigError) as e:
        _exp({"name": "custom", **strategy})
    assert message in str(e.value)
    assert e.value.exit_code == 2


def test_a_missing_attribute_names_the_file_that_was_imported(write_module, tmp_path):
    write_module("rules", RULES)
    with pytest.raises(ConfigError, match=re.escape(f"module 'rules' ({tmp_path / 'rules.py'}) has no attribute 'median'")):
        _exp({"name": "custom", "rule": "rules:median"})


BAD_RULES = """
    import torch

    def stacked(updates, weights):
        return dict(updates)

    def short(updates, weights):
        return {n: x.mean(0, keepdim=True) for n, x in list(updates.items())[1:]}

    def renamed(updates, weights):
        return {n + "_": x.mean(0, keepdim=True) for n, x in updates.items()}

    def listed(updates, weights):
        return [x.mean(0, keepdim=True) for x in updates.values()]

    def array(updates, weights):
        return {n: x.mean(0, keepdim=True).numpy() for n, x in updates.items()}

    def integers(updates, weights):
        return {n: torch.zeros_like(x[:1], dtype=torch.int64) for n, x in updates.items()}

    def nan(updates, weights):
        return {n: torch.full_like(x[:1], float("nan")) for n, x in updates.items()}

    def inf(updates, weights):
        return {n: torch.full_like(x[:1], float("inf")) for n, x in updates.items()}

    def raises(updates, weights):
        raise RuntimeError("no consensus")
"""

BAD_RETURNS = [
    ("stacked", "strategy.rule bad:stacked returned '1.weight' of shape [3, 128, 64], expected [1, 128, 64]"),
    ("short", "strategy.rule bad:short returned the names ['1.bias', '3.bias', '3.weight'], expected those of the "
              "updates, ['1.weight', '1.bias', '3.weight', '3.bias']; missing ['1.weight']"),
    ("renamed", "; not in the model ['1.bias_', '1.weight_', '3.bias_', '3.weight_']"),
    ("listed", "strategy.rule bad:listed returned an object of type list, expected a dict {name: tensor [1, ...]}"),
    ("array", "strategy.rule bad:array returned '1.weight' of type ndarray, expected a torch.Tensor of shape [1, 128, 64]"),
    ("integers", "strategy.rule bad:integers returned '1.weight' of dtype torch.int64, expected a float tensor"),
    ("nan", "strategy.rule bad:nan returned '1.weight' with 8192 NaN values"),
    ("inf", "strategy.rule bad:inf returned '1.weight' with 8192 Inf values"),
    ("raises", "strategy.rule bad:raises raised RuntimeError: no consensus"),
]


@pytest.mark.parametrize("rule, message", BAD_RETURNS)
def test_a_bad_update_stops_the_run_naming_the_rule(docs_folder, rule, message):
    (docs_folder / "bad.py").write_text(textwrap.dedent(BAD_RULES))
    result = invoke("run", "median.toml", "--set", f"strategy.rule=bad:{rule}", "--set", "train.rounds=1",
                    "--set", "baselines=[]", "--out", docs_folder / "run")
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_a_rule_that_cannot_be_imported_stops_the_command_before_the_run_directory(docs_folder):
    result = invoke("run", "median.toml", "--set", "strategy.rule=myrule:weighted_median", "--out", docs_folder / "run")
    assert result.exit_code == 2, result.output
    assert "strategy.rule: cannot import module 'myrule'" in result.output
    assert f"looked in the working directory {docs_folder}" in result.output
    assert not (docs_folder / "run").exists()


def test_non_finite_updates_from_diverged_clients_say_so(write_module):
    write_module("meanrule", MEAN)
    exp = validate({"clients": [{"count": 3}], "strategy": {"name": "custom", "rule": "meanrule:mean"},
                    "train": {"lr": 1e30, "batch_size": 8, "rounds": 1}})
    with pytest.raises(FedbridgeError, match="local training diverged; lower train.lr") as e:
        train(exp.method("custom"), _federation(), exp, seed=0)
    assert e.value.exit_code == 1


def test_a_python_caller_keeps_the_rules_own_traceback(write_module):
    write_module("bad", BAD_RULES)
    with pytest.raises(FedbridgeError) as e:
        _run({"name": "custom", "rule": "bad:raises"})
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_strategy_object_or_a_function_making_one(write_module):
    write_module("made", "from fedbridge.strategies.fedavg import FEDAVG\n\ndef factory():\n    return FEDAVG\n")
    fedavg = _run({"name": "fedavg"})
    assert _same(_run({"name": "custom", "strategy": "made:FEDAVG"}), fedavg)
    assert _same(_run({"name": "custom", "strategy": "made:factory"}), fedavg)
