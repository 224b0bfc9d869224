"""The datasets fedbridge knows: their checksums, mirrors, folder names and how to get them."""

from dataclasses import dataclass

from fedbridge.errors import DataError


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


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(KNOWN)}.")
    return DATASETS[name]


def owner(stem: str, digest: str) -> DatasetSpec | None:
    """The dataset whose file `stem` has this MD5, if any."""
    return next((s for s in DATASETS.values() if s.md5.get(stem) == digest), None)
