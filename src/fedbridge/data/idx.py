"""Find, verify, cache and load MNIST-style datasets stored as IDX files.

Every file is checked against the MD5 of its *uncompressed* bytes: the .gz wrappers differ
between mirrors and re-compressions, the payload does not. A verified file is cached
uncompressed so later loads skip the gunzip, and a cache entry is re-checked on every use.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from fedbridge.errors import DataError

ENV_DATA = "FEDBRIDGE_DATA"
ENV_CACHE = "FEDBRIDGE_CACHE"
# Debian's dataset-fashion-mnist package installs the four .gz files under this folder.
SYSTEM_DIR = Path("/usr/share/datasets")

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Short connect/read timeout: an offline machine should fail in seconds, not minutes.
TIMEOUT_S = 20.0
# The real files are < 30 MB compressed; a mirror streaming more than this is broken.
MAX_DOWNLOAD_BYTES = 200 * 2**20

_FIX_CORRUPT = (
    "Fix: re-download it (for the shipped .gz files, `sha256sum -c SHA256SUMS` in that folder "
    "shows which are damaged), or point --data-dir / FEDBRIDGE_DATA at a good copy."
)


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    md5: dict[str, str]  # file name (no .gz) -> MD5 of its uncompressed bytes
    mirrors: tuple[str, ...]  # base URLs, tried in order; file name + ".gz" is appended
    # Sub-folder names accepted under a data root; the torchvision layout is common enough to accept.
    folders: tuple[str, ...]
    how_to_get: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        title="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        folders=("mnist", "MNIST/raw"),
    ),
    "fashion-mnist": DatasetSpec(
        title="Fashion-MNIST",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        folders=("fashion-mnist", "FashionMNIST/raw"),
        how_to_get="on Debian/Ubuntu, `sudo apt-get install dataset-fashion-mnist` "
        "(installs them under /usr/share/datasets/fashion-mnist)",
    ),
}
KNOWN = (*DATASETS, "digits")


@dataclass(frozen=True)
class Dataset:
    name: str  # "mnist" | "fashion-mnist" | "digits"
    train_images: np.ndarray  # uint8 [N, H, W]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, H, W]
    test_labels: np.ndarray  # int64 [M]
    source: str  # where the files were found, for humans
    num_classes: int = 10


@dataclass(frozen=True)
class Candidate:
    """One search location: what is there and, if `checked`, whether each file verifies."""

    where: str  # "--data-dir" | "FEDBRIDGE_DATA" | "cache" | "system"
    folder: Path | None  # None: the option / variable was not given
    found: dict[str, Path] = field(default_factory=dict)  # file name (no .gz) -> file there
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why it fails
    checked: bool = False

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
            return f"{head}: {'not a folder' if self.folder.exists() else 'folder does not exist'}"
        missing = [f for f in FILES if f not in self.found]
        parts = [f"{len(self.found)} of {len(FILES)} files"]
        if missing:
            parts.append("missing " + ", ".join(f"{f}[.gz]" for f in missing))
        if self.checked:
            parts += [f"{self.found[f].name} FAILS: {why}" for f, why in self.problems.items()]
            if not self.problems and self.found:
                parts.append("those found verify" if missing else "all verify")
        return f"{head}: " + "; ".join(parts)


class _Corrupt(Exception):
    """Why some bytes are not the expected IDX file; callers add the file name and the fix."""


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fedbridge"))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not (decided by its magic bytes)."""
    path = Path(path)
    try:
        return _parse(_decompress(_read(path)))
    except _Corrupt as e:
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def locate(name: str, data_dir: Path | None = None) -> list[Candidate]:
    """Every search location in order, with every file found there verified (slow: reads them all)."""
    if name == "digits":
        return []  # bundled with scikit-learn: nothing to find on disk
    _spec(name)
    out = []
    for cand in _candidates(name, data_dir):
        problems = {}
        for stem, path in cand.found.items():
            try:
                _verify(name, stem, _decompress(_read(path)))
            except _Corrupt as e:
                problems[stem] = str(e)
        out.append(Candidate(cand.where, cand.folder, cand.found, problems, checked=True))
    return out


def load_dataset(
    name: str, data_dir: Path | None = None, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load a dataset from the first location holding all its files, else download it into the cache."""
    if name == "digits":
        return _load_digits()
    spec = _spec(name)
    cache = cache_dir() / name
    looked: list[Candidate] = []
    cached: dict[str, tuple[np.ndarray, bytes]] = {}
    for cand in _candidates(name, data_dir):
        looked.append(cand)
        if cand.where == "cache":
            # Cache entries are only ever ours, so a bad one is replaced rather than reported as an error.
            cached = _load_cache(name, cand.found)
            if len(cached) == len(FILES):
                return _dataset(name, cached, f"{cand.folder} (cache)")
            continue
        if cand.where == "--data-dir" and cand.folder is not None and not cand.complete:
            # the folder the user named is the data they meant: never quietly take another one
            raise DataError(_not_in_given(spec, cand))
        if not cand.complete:
            continue
        # The user's own files: a bad one is an error, never skipped in favour of a later location.
        loaded = {}
        for stem, path in cand.found.items():
            data = _decompress(_read(path), path)
            loaded[stem] = (_verify(name, stem, data, path), data)
        for stem, (_, data) in loaded.items():
            _store(cache, stem, data)
        return _dataset(name, loaded, f"{cand.folder} ({cand.where})")

    if not download:
        raise DataError(_not_found(spec, looked, ["downloading was turned off"]))
    mirrors, failures = _download_missing(name, cached, cache, progress)
    if len(cached) < len(FILES):
        raise DataError(_not_found(spec, looked, failures))
    how = f"downloaded from {', '.join(mirrors)}" if mirrors else "cache"
    return _dataset(name, cached, f"{cache} ({how})")


# --- locating -------------------------------------------------------------------------------


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(KNOWN)}.")
    return DATASETS[name]


def _candidates(name: str, data_dir: Path | None) -> list[Candidate]:
    env = os.environ.get(ENV_DATA)
    places = [
        ("--data-dir", _dataset_folder(name, Path(data_dir)) if data_dir else None),
        (ENV_DATA, _dataset_folder(name, Path(env).expanduser()) if env else None),
        ("cache", cache_dir() / name),
        ("system", SYSTEM_DIR / name),
    ]
    return [Candidate(where, folder, _find_files(folder)) for where, folder in places]


def _dataset_folder(name: str, root: Path) -> Path:
    # Users point at either the parent (holding mnist/) or the dataset folder itself.
    for sub in DATASETS[name].folders:
        if (root / sub).is_dir():
            return root / sub
    return root


def _find_files(folder: Path | None) -> dict[str, Path]:
    found = {}
    for stem in FILES:
        # Prefer the uncompressed file when both exist (torchvision's raw/ folders): no gunzip.
        for path in (folder / stem, folder / f"{stem}.gz") if folder else ():
            if path.is_file():
                found[stem] = path
                break
    return found


# --- reading and verifying ------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}). Check its permissions.") from None


def _decompress(raw: bytes, path: Path | None = None) -> bytes:
    """Gunzip if the bytes are gzip; with `path`, errors become DataError naming it."""
    try:
        if raw[:2] != b"\x1f\x8b":
            return raw
        try:
            return gzip.decompress(raw)
        except EOFError:
            # Decompress what is there, so the message can say how much is missing.
            partial = zlib.decompressobj(wbits=31).decompress(raw)
            try:
                _parse(partial)
            except _Corrupt as e:
                if str(e).startswith("truncated: header says"):
                    raise _Corrupt(f"truncated gzip stream ({e})") from None
            raise _Corrupt("truncated gzip stream") from None
        except (OSError, zlib.error) as e:
            raise _Corrupt(f"not a valid gzip file ({e})") from None
    except _Corrupt as e:
        if path is None:
            raise
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def _parse(data: bytes) -> np.ndarray:
    # IDX header: two zero bytes, element type, number of dimensions, then one big-endian u32 per dimension.
    if len(data) < 4 or data[:2] != b"\0\0":
        hint = " (looks like an HTML page, not data)" if data[:1] == b"<" else ""
        raise _Corrupt(f"not an IDX file: starts with bytes {data[:4].hex(' ') or '(empty)'}{hint}")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise _Corrupt(f"IDX element type is 0x{dtype:02x}; only unsigned bytes (0x08) are supported")
    if ndim == 0:
        raise _Corrupt("IDX header has 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _Corrupt(f"truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise _Corrupt(f"{what}: header says {expected} bytes, file has {len(data)}")
    # Copy so callers get a writable array (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _verify(name: str, stem: str, data: bytes, path: Path | None = None) -> np.ndarray:
    try:
        array = _parse(data)
        want_ndim = 3 if "idx3" in stem else 1
        if array.ndim != want_ndim:
            raise _Corrupt(f"expected {want_ndim} dimensions, header has {array.ndim}")
        expected, actual = DATASETS[name].md5[stem], _md5(data)
        if actual != expected:
            raise _Corrupt(f"wrong checksum: expected MD5 {expected}, got {actual}{_whose(name, stem, actual)}")
        return array
    except _Corrupt as e:
        if path is None:
            raise
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def _whose(name: str, stem: str, digest: str) -> str:
    # The commonest "corruption" is a folder holding the other dataset; say so plainly.
    for other, spec in DATASETS.items():
        if other != name and spec.md5.get(stem) == digest:
            return f" (this is the {spec.title} file, not the {DATASETS[name].title} one)"
    return ""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _dataset(name: str, files: dict[str, tuple[np.ndarray, bytes]], source: str) -> Dataset:
    arrays = {stem: array for stem, (array, _) in files.items()}
    for images, labels in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
        if len(arrays[images]) != len(arrays[labels]):
            raise DataError(
                f"{source}: {images} has {len(arrays[images])} images but {labels} has "
                f"{len(arrays[labels])} labels. The files come from different datasets; re-download them."
            )
    return Dataset(
        name=name,
        train_images=arrays[FILES[0]],
        train_labels=arrays[FILES[1]].astype(np.int64),
        test_images=arrays[FILES[2]],
        test_labels=arrays[FILES[3]].astype(np.int64),
        source=source,
    )


# --- cache ----------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"fedbridge: warning: {message}", file=sys.stderr)


def _load_cache(name: str, found: dict[str, Path]) -> dict[str, tuple[np.ndarray, bytes]]:
    good = {}
    for stem, path in found.items():
        try:
            data = _read(path)
            good[stem] = (_verify(name, stem, data), data)
        except (_Corrupt, DataError) as e:
            _warn(f"cache entry {path} is bad ({e}); deleting it and rebuilding it from the source")
            path.unlink(missing_ok=True)
    return good


def _store(folder: Path, stem: str, data: bytes) -> None:
    """Write verified, uncompressed bytes into the cache atomically (a crash never leaves half a file)."""
    target = folder / stem
    try:
        if target.is_file():
            if target.read_bytes() == data:
                return
            _warn(f"cache entry {target} differs from the verified source; replacing it")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        # The cache only saves time; loading still succeeds without it.
        _warn(f"cannot write cache entry {target} ({e}); continuing without caching it")


# --- download -------------------------------------------------------------------------------


def _download_missing(
    name: str, have: dict[str, tuple[np.ndarray, bytes]], cache: Path, progress: bool
) -> tuple[list[str], list[str]]:
    """Download into `have` (and the cache) each file it lacks; return mirrors used and failures."""
    spec = DATASETS[name]
    used: list[str] = []
    failures: list[str] = []
    unreachable: set[str] = set()  # a mirror that refused a connection is not retried for later files
    with _progress_bar(progress) as bar:
        for stem in FILES:
            if stem in have:
                continue
            for mirror in spec.mirrors:
                url = f"{mirror}{stem}.gz"
                if mirror in unreachable:
                    failures.append(f"{url}: skipped, mirror unreachable")
                    continue
                try:
                    raw = _fetch(url, bar)
                except urllib.error.HTTPError as e:
                    failures.append(f"{url}: HTTP {e.code} {e.reason}")
                    continue
                except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                    unreachable.add(mirror)
                    failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
                    continue
                try:
                    data = _decompress(raw)
                    array = _verify(name, stem, data)
                except _Corrupt as e:
                    failures.append(f"{url}: {e}; rejected, not cached")
                    continue
                have[stem] = (array, data)
                _store(cache, stem, data)
                if mirror not in used:
                    used.append(mirror)
                break
            else:
                return used, failures  # no mirror had this file: the rest would not help
    return used, failures


def _fetch(url: str, advance: Callable[[str, int | None, int], None]) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks, size = [], 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise urllib.error.URLError(f"served more than {MAX_DOWNLOAD_BYTES} bytes")
            chunks.append(chunk)
            advance(url, total, len(chunk))
    return b"".join(chunks)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int | None, int], None]]:
    if not enabled:
        yield lambda url, total, n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    tasks: dict[str, object] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:

        def advance(url: str, total: int | None, n: int) -> None:
            if url not in tasks:
                tasks[url] = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            bar.advance(tasks[url], n)  # type: ignore[arg-type]

        yield advance


def _not_in_given(spec: DatasetSpec, given: Candidate) -> str:
    return (
        f"{given.summary()}. Point --data-dir (or data.dir) at a folder holding {spec.folders[0]}/ with "
        f"the four {spec.title} IDX files (.gz or not), or leave it out to search {ENV_DATA}, the cache "
        "and the mirrors (README, 'Data')."
    )


def _not_found(spec: DatasetSpec, looked: list[Candidate], failures: list[str]) -> str:
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


# --- digits ---------------------------------------------------------------------------------


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # slow import; only this path needs it

    bunch = load_digits()
    images = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    # Fixed split, no shuffling: the same 1,437 / 360 images on every machine.
    return Dataset(
        name="digits",
        train_images=images[:1437],
        train_labels=labels[:1437],
        test_images=images[1437:],
        test_labels=labels[1437:],
        source="scikit-learn's bundled 8x8 digits",
    )
