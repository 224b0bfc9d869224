"""NumPy archives (.npz) in the Keras `mnist.npz` convention: x_train, y_train and optionally x_test,
y_test; images [N, H, W], [N, H, W, C] or [N, C, H, W], or a table [N, F]."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedbridge.data.tables import Part
from fedbridge.errors import DataError

CHANNELS = (1, 3)


def read_npz(path: Path) -> tuple[Part, Part | None]:
    """The training part and, where the archive holds x_test and y_test, the test part."""
    if not path.is_file():
        raise DataError(f"data.path = {str(path)!r}: {'no such file' if not path.exists() else 'not a file'}; "
                        "point it at an .npz archive holding x_train and y_train")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} cannot be read as an .npz archive of plain arrays ({e}); save it with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...), labels as numbers or text") from None
    held = ", ".join(arrays) or "nothing"
    for needed in ("x_train", "y_train"):
        if needed not in arrays:
            raise DataError(f"{path} has no array {needed} (it holds {held}); save the training samples as x_train "
                            "and their labels as y_train: np.savez(path, x_train=..., y_train=...)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} holds only one of x_test and y_test; save both, or neither (a test set is then "
                        "held out of the training arrays)")
    train = _part(path, arrays, "train")
    test = _part(path, arrays, "test") if "x_test" in arrays else None
    if test is not None and test.samples.shape[1:] != train.samples.shape[1:]:
        raise DataError(f"{path}: x_test's samples are {test.samples.shape[1:]}, x_train's {train.samples.shape[1:]}; "
                        "both must have one shape")
    return train, test


def _part(path: Path, arrays: dict[str, np.ndarray], split: str) -> Part:
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    where = f"{path} (x_{split})"
    if len(x) != len(y):
        raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} {len(y)} labels; give one label per sample")
    return Part(samples(x, where), y, f"{path} (y_{split})")


def samples(x: np.ndarray, where: str) -> np.ndarray:
    """A table as float32 [N, F]; images as uint8 (or float32 in [0, 1]) [N, H, W] or [N, C, H, W]."""
    if x.dtype.kind not in "iufb":
        raise DataError(f"{where}: samples of type {x.dtype} are not numbers; save numeric arrays")
    if len(x) == 0:
        raise DataError(f"{where} holds no samples")
    if x.ndim == 2:
        table = x.astype(np.float32)
        if not np.isfinite(table).all():
            raise DataError(f"{where} holds NaN or infinite values; fill them in or remove those rows")
        return table
    if x.ndim == 4:
        if x.shape[1] in CHANNELS:
            pass
        elif x.shape[-1] in CHANNELS:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        else:
            raise DataError(f"{where}: images of shape {x.shape[1:]} have neither 1 nor 3 channels first or last; "
                            "save them as [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3")
    elif x.ndim != 3:
        raise DataError(f"{where}: samples of shape {x.shape} are neither a table [N, F] nor images "
                        "[N, H, W], [N, H, W, C] or [N, C, H, W]")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DataError(f"{where}: float images must lie in [0, 1]; scale them (e.g. divide by 255)")
        return x.astype(np.float32)
    if x.min() < 0 or x.max() > 255:
        raise DataError(f"{where}: integer images must lie in 0..255; scale them to bytes or to floats in [0, 1]")
    return x.astype(np.uint8)
