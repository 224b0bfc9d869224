"""The dataset a study runs on: the one it names, else its fallback, with a note that says so."""

from collections.abc import Callable
from pathlib import Path

from fedbridge.data.datasets import Dataset, load_dataset
from fedbridge.errors import DataError


def with_fallback(name: str, fallback: str | None, data_dir: Path | None,
                  load: Callable[..., Dataset] = load_dataset) -> tuple[Dataset, str | None]:
    """The dataset `name`, or when it cannot be used `fallback` and a note for the user saying why."""
    try:
        return load(name, data_dir), None
    except DataError as e:
        if fallback is None or name == fallback:
            raise
        reason = str(e)
    dataset = load(fallback)
    note = (
        f"{name} could not be used, so this study ran on {dataset.source} instead "
        f"({len(dataset.train_labels)} train / {len(dataset.test_labels)} test images): its figures are "
        f"not MNIST figures. To run on {name}, point FEDBRIDGE_DATA or --data-dir at a folder "
        f"holding {name}/ (see README, 'Data'). Why: {reason}"
    )
    return dataset, note
