"""CIFAR-10 in its official Python layout, cifar-10-batches-py/ (data_batch_1..5, test_batch,
batches.meta: pickled dicts), from the folder or from the .tar.gz it is shipped in."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedbridge.data.tables import Part
from fedbridge.errors import DataError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the archive at https://www.cs.toronto.edu/~kriz/
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST, META = "test_batch", "batches.meta"
# what the batches' pickles are made of; anything else in a pickle would run code, so it is refused
SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def find(path: Path | None, roots: list[Path]) -> Path:
    """`path`, or the first of the folder or the archive under one of `roots`."""
    if path is not None:
        return path
    for root in roots:
        for candidate in (root / FOLDER, root / ARCHIVE, root / "cifar10" / FOLDER, root / "cifar10" / ARCHIVE):
            if candidate.exists():
                return candidate
    looked = ", ".join(str(r) for r in roots) or "nowhere (no --data-dir, data.dir or FEDBRIDGE_DATA)"
    raise DataError(f"CIFAR-10 not found: looked for {FOLDER}/ or {ARCHIVE} in {looked}. Download {ARCHIVE} from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html and set data.path to it (or its unpacked folder)")


def read_cifar(path: Path) -> tuple[Part, Part]:
    """The 50,000 training and 10,000 test images, uint8 [N, 3, 32, 32], and the classes' names."""
    if path.is_file():
        read = _from_archive(path)
    elif path.is_dir():
        folder = path / FOLDER if (path / FOLDER).is_dir() else path
        read = lambda name: (folder / name).read_bytes() if (folder / name).is_file() else None  # noqa: E731
    else:
        raise DataError(f"data.path = {str(path)!r} does not exist; point it at {ARCHIVE} or its {FOLDER}/ folder")
    meta = _unpickle(read, META, path)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", meta.get("label_names", [])))
    train = [_batch(read, name, path) for name in TRAIN]
    x, y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    test = _batch(read, TEST, path)
    return Part(x, y, f"{path} (data_batch_1..5)", class_names=names), Part(*test, f"{path} ({TEST})", class_names=names)


def _from_archive(path: Path) -> Callable[[str], bytes | None]:
    data = path.read_bytes()
    if path.name == ARCHIVE and hashlib.md5(data).hexdigest() != ARCHIVE_MD5:
        raise DataError(f"{path} is not the official CIFAR-10 archive (its MD5 is {hashlib.md5(data).hexdigest()}, not "
                        f"{ARCHIVE_MD5}): it is damaged or incomplete; download it again")
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = {m.name.split("/")[-1]: m for m in archive.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path} cannot be read as a .tar.gz archive ({e}); download it again") from None

    def read(name: str) -> bytes | None:
        member = members.get(name)
        return None if member is None else archive.extractfile(member).read()

    return read


class _Batches(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE:
            raise pickle.UnpicklingError(f"it holds a {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def _unpickle(read: Callable[[str], bytes | None], name: str, path: Path) -> dict:
    data = read(name)
    if data is None:
        raise DataError(f"{path} has no {name}; the official layout is {FOLDER}/ with {', '.join([*TRAIN, TEST, META])}")
    try:
        out = _Batches(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: {name} is not a CIFAR-10 batch ({e}); download the archive again") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: {name} is not a CIFAR-10 batch (a pickled dict); download the archive again")
    return out


def _batch(read: Callable[[str], bytes | None], name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(read, name, path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    try:
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {name} has no 32x32x3 images under b'data' and labels under b'labels'; "
                        "download the archive again") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {name} has {len(images)} images but {len(labels)} labels; download the archive again")
    return images, labels
