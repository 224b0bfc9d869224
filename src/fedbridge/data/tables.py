"""A table of samples, one row each: a CSV (or Parquet) file with a label column and numeric
features; and the tables scikit-learn ships (breast cancer, wine)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbridge.errors import ConfigError, DataError

# scikit-learn's bundled tables: offline, the same rows on every machine
BUNDLED = {
    "breast-cancer": ("load_breast_cancer", "scikit-learn's bundled Wisconsin breast cancer data (569 patients, 30 features)"),
    "wine": ("load_wine", "scikit-learn's bundled wine data (178 wines, 13 features)"),
}


@dataclass(frozen=True)
class Part:
    """Samples read from one source, before their labels are numbered."""

    samples: np.ndarray  # a table float32 [N, F], or images (see Dataset)
    labels: np.ndarray  # [N], names or numbers
    where: str  # the file or folder, for messages
    clients: np.ndarray | None = None  # [N] the client each row belongs to, as text
    class_names: tuple[str, ...] = ()  # where labels are numbers: number k's name


def bundled(name: str) -> Part:
    """One of scikit-learn's bundled tables, its classes named as scikit-learn names them."""
    from sklearn import datasets  # slow import; only this path needs it

    function, title = BUNDLED[name]
    bunch = getattr(datasets, function)()
    return Part(bunch.data.astype(np.float32), bunch.target.astype(np.int64), title,
                class_names=tuple(str(n) for n in bunch.target_names))


def read_table(path: Path, label: str, drop: list[str], client: str | None, *, key: str = "data.path",
               ignore: tuple[str, ...] = ()) -> Part:
    """The rows of a CSV or Parquet file: `label` the class, `client` (if given) the holder, every other
    column not in `drop` (nor in `ignore`, where the file has it) a numeric feature. Anything that is not
    a number, and any empty cell, is refused."""
    frame = _frame(path, key)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    shown = ", ".join(columns[:30]) + (", ..." if len(columns) > 30 else "")
    for what, names in (("data.label", [label]), ("data.client", [client] if client else []), ("data.drop", drop)):
        if missing := [n for n in names if n not in columns]:
            raise ConfigError(f"{what} = {missing[0]!r}: {path} has no such column; its columns are {shown}")
    skipped = [c for c in ignore if c in columns and c != client]
    features = frame.drop(columns=[label, *drop, *([client] if client else []), *skipped])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature column is left beside data.label (and data.client, data.drop); "
                        "a table needs at least one numeric feature column")
    for column in [label, *([client] if client else []), *features.columns]:
        empty = frame[column].isna().to_numpy()
        if empty.any():
            raise DataError(f"{path}: column {column!r} has {empty.sum()} empty or NaN cells, the first on line "
                            f"{_line(empty)}; fill them in or remove those rows")
    for column in features.columns:
        values = features[column]
        if values.dtype.kind not in "iufb":
            import pandas as pd

            bad = pd.to_numeric(values, errors="coerce").isna().to_numpy()
            raise DataError(f"{path}: feature column {column!r} is not numeric ({values.iloc[int(bad.argmax())]!r} on "
                            f"line {_line(bad)}); encode it as numbers, or list it in data.drop = [{column!r}]")
    x = features.to_numpy(dtype=np.float32)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{path}: feature column {features.columns[col]!r} holds an infinite number (line {row + 2}); "
                        "replace it with a finite value")
    owners = frame[client].astype(str).to_numpy() if client else None
    if owners is not None and len(set(owners)) < 2:
        raise DataError(f"{path}: data.client = {client!r} names one client only ({owners[0]!r}); a federation needs "
                        "two or more: give the rows of each holder their own value, or drop data.client")
    return Part(x, frame[label].to_numpy(), str(path), owners)


def _line(mask: np.ndarray) -> int:
    return int(mask.argmax()) + 2  # a file's first line is the header; people count lines from 1


def _frame(path: Path, key: str):
    import pandas as pd  # slow import; only tables need it

    parquet = path.suffix.lower() == ".parquet"
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"{key} = {str(path)!r} is a Parquet file, which needs pyarrow: pip install pyarrow "
                          "(or save the table as .csv)")
    if not path.is_file():
        raise DataError(f"{key} = {str(path)!r}: {'no such file' if not path.exists() else 'not a file'}; "
                        "point it at the table (.csv or .parquet)")
    try:
        return pd.read_parquet(path) if parquet else pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path} cannot be read as a {'Parquet' if parquet else 'CSV'} table: {e}; "
                        "give a table with a header line, one row per sample") from None
