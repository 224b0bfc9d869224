"""The benchmarks' own error handling (the benchmarks themselves run outside the test run)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # the benchmarks package sits beside src/, not installed

from benchmarks import entry, results_file  # noqa: E402
from fedbridge.errors import DataError, FedbridgeError  # noqa: E402


def test_entry_prints_fedbridge_errors_and_exits_with_their_code(capsys):
    def main():
        raise DataError("MNIST not found; set FEDBRIDGE_DATA")

    with pytest.raises(SystemExit) as exited:
        entry(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: MNIST not found; set FEDBRIDGE_DATA\n"


def test_results_file_makes_its_folder_and_keeps_what_is_there(tmp_path):
    made = results_file(tmp_path / "new" / "speed.json")
    assert made.parent.is_dir() and not made.exists()  # a run that fails later leaves no empty file
    kept = tmp_path / "old.json"
    kept.write_text("{}")
    results_file(kept)
    assert kept.read_text() == "{}"


def test_an_unwritable_results_file_is_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FedbridgeError, match=r"cannot write the results file .*file/speed.json.*--json"):
        results_file(blocker / "speed.json")
    with pytest.raises(FedbridgeError, match=r"cannot write the results file .*--json"):
        results_file(tmp_path)  # a folder, not a file
