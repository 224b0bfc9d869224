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
    name: str  # "mnist" | "fashion-mnist" | "digits"
    train_images: np.ndarray  # uint8 [N, H, W]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, H, W]
    test_labels: np.ndarray  # int64 [M]
    source: str  # where the files were found, for humans
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample as the models take it, [channels, height, width]: federation.to_float adds the channel."""
        return (1, *self.train_images.shape[1:])


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
