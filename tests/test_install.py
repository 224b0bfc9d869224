"""Installing: the project's machines get the exact CPU torch through constraints.txt, users get a
range that keeps their own torch, and the built wheel holds the files fedbridge reads at run time."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version

from packaging.requirements import Requirement  # pytest's own dependency, so always there in the dev extra

from conftest import CONFIGS, ROOT

PIN = "torch==2.13.0"


def _torch(requirements: list[str]) -> Requirement:
    (torch,) = [r for r in map(Requirement, requirements) if r.name == "torch"]
    return torch


def test_constraints_pin_exactly_the_cpu_torch():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == [PIN]


def test_pyproject_gives_a_range_that_admits_the_pin():
    torch = _torch(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    pinned = Requirement(PIN).specifier
    assert len(torch.specifier) == 2, f"{torch}: a lower and an upper bound, not a pin"
    assert torch.specifier.contains("2.13.0") and not torch.specifier.contains("99")
    # the torch these tests run on came through the pin, i.e. the machines' CPU wheel (2.13.0+cpu)
    assert torch.specifier.contains(version("torch")) and pinned.contains(version("torch"))


def test_every_pip_install_of_the_makefile_passes_the_constraints():
    installs = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_the_wheel_holds_the_presets_and_the_flower_app_config(tmp_path):
    # built from a copy, so the shared working tree gets no build/ folder (about 3 s, no network)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "src" / "fedbridge", tmp_path / "src" / "fedbridge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", "out"],
                   cwd=tmp_path, check=True, capture_output=True)
    (wheel,) = (tmp_path / "out").glob("fedbridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fedbridge/presets/{p.name}" for p in CONFIGS.glob("*.toml")} <= names
    assert "fedbridge/engines/flower/app/pyproject.toml" in names
