"""Load a dataset by name: from the first place holding all its verified files, else download it
into the cache; or the digits fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbridge.data import catalog, digits
from fedbridge.data.cache import cache_dir, load_cache, store
from fedbridge.data.download import download_missing
from fedbridge.data.idx import FILES, decompress, read_bytes, verify
from fedbridge.data.sources import Candidate, candidates, not_found, not_in_given
from fedbridge.errors import DataError


@dataclass(frozen=True)
class Dataset:
    name: str  # "mnist" | "fashion-mnist" | "digits" | a user's data (its file's name by default)
    # images: uint8 [N, H, W] (one channel), uint8 or float32 in [0, 1] [N, C, H, W]; a table: float32 [N, F]
    train_images: np.ndarray
    train_labels: np.ndarray  # int64 [N], class numbers 0..num_classes-1
    test_images: np.ndarray  # as train_images, [M, ...]
    test_labels: np.ndarray  # int64 [M]
    source: str  # where the files were found, for humans
    num_classes: int = 10
    class_names: tuple[str, ...] = ()  # class k's name; () where the classes are only numbers
    # the client each training row belongs to (index into client_names), for partition "natural"
    train_clients: np.ndarray | None = None
    client_names: tuple[str, ...] = ()  # sorted
    # True where the test set is held out of (or given beside) the user's data rather than a clean
    # reference split: its column is titled "common test", not "clean test"
    common_test: bool = False

    @property
    def tabular(self) -> bool:
        return self.train_images.ndim == 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample as the models take it, [channels, height, width] or [features]: federation.to_float
        adds the channel to one-channel [N, H, W] images."""
        shape = self.train_images.shape[1:]
        return (1, *shape) if len(shape) == 2 else tuple(shape)


def load_dataset(
    name: str, data_dir: Path | None = None, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load a dataset from the first location holding all its files, else download it into the cache."""
    if name == "digits":
        return Dataset("digits", *digits.load(), source=digits.SOURCE)
    spec = catalog.spec(name)
    cache = cache_dir() / name
    looked: list[Candidate] = []
    cached: dict[str, tuple[np.ndarray, bytes]] = {}
    for cand in candidates(name, data_dir):
        looked.append(cand)
        if cand.where == "cache":
            # Cache entries are only ever ours, so a bad one is replaced rather than reported as an error.
            cached = load_cache(name, cand.found)
            if len(cached) == len(FILES):
                return _dataset(name, cached, f"{cand.folder} (cache)")
            continue
        if cand.where == "--data-dir" and cand.folder is not None and not cand.complete:
            # the folder the user named is the data they meant: never quietly take another one
            raise DataError(not_in_given(spec, cand))
        if not cand.complete:
            continue
        # The user's own files: a bad one is an error, never skipped in favour of a later location.
        loaded = {}
        for stem, path in cand.found.items():
            data = decompress(read_bytes(path), path)
            loaded[stem] = (verify(name, stem, data, path), data)
        for stem, (_, data) in loaded.items():
            store(cache, stem, data)
        return _dataset(name, loaded, f"{cand.folder} ({cand.where})")

    if not download:
        raise DataError(not_found(spec, looked, ["downloading was turned off"]))
    mirrors, failures = download_missing(name, cached, cache, progress)
    if len(cached) < len(FILES):
        raise DataError(not_found(spec, looked, failures))
    how = f"downloaded from {', '.join(mirrors)}" if mirrors else "cache"
    return _dataset(name, cached, f"{cache} ({how})")


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
