"""Where a dataset's files may be, in search order: --data-dir, FEDBRIDGE_DATA, the cache, the system
folder; what each place holds, and the messages that say where fedbridge looked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fedbridge.data.cache import cache_dir
from fedbridge.data import catalog
from fedbridge.data.catalog import DatasetSpec
from fedbridge.data.idx import FILES, Corrupt, decompress, describe, read_bytes, unreadable, verify
from fedbridge.errors import DataError

ENV_DATA = "FEDBRIDGE_DATA"
# Debian's dataset-fashion-mnist package installs the four .gz files under this folder.
SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Candidate:
    """One search location: what is there and, if `checked`, whether each file verifies."""

    where: str  # "--data-dir" | "FEDBRIDGE_DATA" | "cache" | "system"
    folder: Path | None  # None: the option / variable was not given
    found: dict[str, Path] = field(default_factory=dict)  # file name (no .gz) -> file there
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why it fails
    checked: bool = False
    # what stands where a file should be and is not one: path -> why ("is a directory, not an IDX file")
    unusable: dict[Path, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.found) == len(FILES)

    @property
    def ok(self) -> bool:
        return self.complete and self.checked and not self.problems

    def summary(self) -> str:
        if self.folder is None:
            return f"{self.where}: {'not set' if self.where == ENV_DATA else 'not given'}"
        head = f"{self.where} {self.folder}"
        if not self.folder.is_dir():
            if not os.path.lexists(self.folder):
                return f"{head}: folder does not exist"
            return f"{head}: not a folder, it {describe(self.folder)}"
        blocked = {path.name.removesuffix(".gz") for path in self.unusable}
        missing = [f for f in FILES if f not in self.found and f not in blocked]
        parts = [f"{len(self.found)} of {len(FILES)} files"]
        if missing:
            parts.append("missing " + ", ".join(f"{f}[.gz]" for f in missing))
        fix = "remove it and fedbridge rebuilds the entry" if self.where == "cache" else "put the file itself there"
        parts += [f"{path} {why} ({fix})" for path, why in self.unusable.items()]
        if self.checked:
            parts += [f"{self.found[f].name} FAILS: {why}" for f, why in self.problems.items()]
            if not self.problems and self.found:
                parts.append("those found verify" if missing or self.unusable else "all verify")
        return f"{head}: " + "; ".join(parts)


def locate(name: str, data_dir: Path | None = None) -> list[Candidate]:
    """Every search location in order, with every file found there verified (slow: reads them all)."""
    if name == "digits":
        return []  # bundled with scikit-learn: nothing to find on disk
    catalog.spec(name)
    out = []
    for cand in candidates(name, data_dir):
        problems = {}
        for stem, path in cand.found.items():
            try:
                verify(name, stem, decompress(read_bytes(path)))
            except (Corrupt, DataError) as e:  # DataError: it changed since it was found
                problems[stem] = str(e)
        out.append(Candidate(cand.where, cand.folder, cand.found, problems, checked=True, unusable=cand.unusable))
    return out


def candidates(name: str, data_dir: Path | None) -> list[Candidate]:
    """Every search location in order, with the files found there (not yet verified)."""
    env = os.environ.get(ENV_DATA)
    places = [
        ("--data-dir", _dataset_folder(name, Path(data_dir)) if data_dir else None),
        (ENV_DATA, _dataset_folder(name, Path(env).expanduser()) if env else None),
        ("cache", cache_dir() / name),
        ("system", SYSTEM_DIR / name),
    ]
    out = []
    for where, folder in places:
        found, unusable = _find_files(folder)
        out.append(Candidate(where, folder, found, unusable=unusable))
    return out


def not_in_given(spec: DatasetSpec, given: Candidate) -> str:
    return (
        f"{given.summary()}. Point --data-dir (or data.dir) at a folder holding {spec.folders[0]}/ with "
        f"the four {spec.title} IDX files (.gz or not), or leave it out to search {ENV_DATA}, the cache "
        "and the mirrors (README, 'Data')."
    )


def not_found(spec: DatasetSpec, looked: list[Candidate], failures: list[str]) -> str:
    lines = [f"{spec.title} not found, and it could not be downloaded.", "Looked in:"]
    lines += [f"  {c.summary()}" for c in looked]
    lines += ["Download:"] + [f"  {f}" for f in failures or ["no mirrors configured"]]
    how = [
        f"set {ENV_DATA} to a folder holding {spec.folders[0]}/ with the four IDX files "
        "(.gz or not), or pass --data-dir",
    ]
    if spec.how_to_get:
        how.append(spec.how_to_get)
    lines.append("To get the data: " + "; or ".join(how) + ".")
    return "\n".join(lines)


def _dataset_folder(name: str, root: Path) -> Path:
    # Users point at either the parent (holding mnist/) or the dataset folder itself; something by
    # the dataset's name that is not a folder (a named pipe, a looping link) is reported as such.
    subs = [root / sub for sub in catalog.spec(name).folders]
    return next((p for p in subs if p.is_dir()), next((p for p in subs if os.path.lexists(p)), root))


def _find_files(folder: Path | None) -> tuple[dict[str, Path], dict[Path, str]]:
    """The files found in `folder`, and what stands where a file should be without being one."""
    found: dict[str, Path] = {}
    unusable: dict[Path, str] = {}
    if folder is None or not folder.is_dir():
        return found, unusable
    for stem in FILES:
        odd = {}
        # Prefer the uncompressed file when both exist (torchvision's raw/ folders): no gunzip.
        for path in (folder / stem, folder / f"{stem}.gz"):
            why = unreadable(path)
            if why is None:
                found[stem] = path
                break
            # a directory, a named pipe or a looping link is not "missing": say what it is
            if os.path.lexists(path):
                odd[path] = why
        else:
            unusable.update(odd)
    return found, unusable
