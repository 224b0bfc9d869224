"""`fedbridge init`: every preset of configs/ is written as it is there and validates, and nothing
is ever overwritten."""

import pytest

import fedbridge
from conftest import CONFIGS, invoke

PRESETS = sorted(p.stem for p in CONFIGS.glob("*.toml"))


def test_configs_is_the_shipped_presets():
    # one copy of each preset: the repository's configs/ is the package's presets/ folder
    assert CONFIGS.is_symlink() and CONFIGS.resolve() == (CONFIGS.parent / "src/fedbridge/presets").resolve()
    assert PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_init_writes_the_preset_and_it_validates(preset, tmp_path):
    result = invoke("init", preset, tmp_path / "new")
    assert result.exit_code == 0, result.output
    written = tmp_path / "new" / f"{preset}.toml"
    assert written.read_bytes() == (CONFIGS / f"{preset}.toml").read_bytes()
    assert fedbridge.load_experiment(written).name == preset


def test_init_defaults_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("init", "seed").exit_code == 0
    assert (tmp_path / "seed.toml").is_file()


def test_init_without_a_preset_lists_them_with_their_first_comment_line():
    result = invoke("init")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == PRESETS
    first = (CONFIGS / "seed.toml").read_text().splitlines()[0].removeprefix("#").strip()
    assert lines[PRESETS.index("seed")].endswith(first)


def test_init_never_overwrites(tmp_path):
    mine = tmp_path / "seed.toml"
    mine.write_text("# my own experiment\n")
    result = invoke("init", "seed", tmp_path)
    assert result.exit_code == 1
    assert f"{mine} already exists; nothing was changed" in result.output
    assert mine.read_text() == "# my own experiment\n"


def test_init_into_a_file_says_so(tmp_path):
    (tmp_path / "file").write_text("")
    result = invoke("init", "seed", tmp_path / "file")
    assert result.exit_code == 1
    assert "is a file, not a folder" in result.output


def test_an_unknown_preset_lists_the_known_ones(tmp_path):
    result = invoke("init", "sed", tmp_path)
    assert result.exit_code == 2
    assert f"unknown preset 'sed'; the presets are: {', '.join(PRESETS)}" in result.output
    assert not list(tmp_path.iterdir())
