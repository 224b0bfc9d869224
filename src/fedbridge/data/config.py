"""[data]: which data a study runs on and how it is read, validated with the rest of the experiment
(fedbridge.experiment) before anything is loaded."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from fedbridge.strict import Strict

IDX_NAMES = ("mnist", "fashion-mnist")  # read from their IDX files (data.format = "idx")
TABLE_NAMES = ("breast-cancer", "wine")  # tables shipped with scikit-learn
BUILT_IN = (*IDX_NAMES, "digits", *TABLE_NAMES, "cifar10")
# the [data] keys that only some formats take, and which
ONLY_FOR = {"label": ("csv",), "drop": ("csv",), "client": ("csv",), "image_size": ("image-folder",),
            "channels": ("image-folder",), "test_path": ("csv", "image-folder")}


class Data(Strict):
    # a built-in dataset (BUILT_IN), or with `format`, the name a user's data is shown under
    name: str = Field(default="mnist", min_length=1, max_length=100)
    format: Literal["idx", "npz", "csv", "image-folder", "cifar10"] | None = None
    path: Path | None = Field(default=None, strict=False)  # the file or folder of `format`
    test_path: Path | None = Field(default=None, strict=False)  # a test set beside a table or a folder
    # of data without a test set, the share held out (fixed seed, stratified) as the common test set
    common_test_fraction: float = Field(default=0.2, gt=0, lt=1)
    label: str | None = None  # csv: the column holding each row's class
    drop: list[str] = []  # csv: columns that are neither the label nor a feature (ids, dates)
    client: str | None = None  # csv: the column saying which client holds each row (partition "natural")
    # image-folder: [height, width] every image is resized to; needed where the images differ in size
    image_size: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(default=None, min_length=2, max_length=2)
    channels: Literal[1, 3] | None = None  # image-folder: greyscale or RGB; default: 1 where every image is grey
    dir: Path | None = Field(default=None, strict=False)  # beats FEDBRIDGE_DATA; TOML gives it as a string
    # used only when `name` cannot be found: the study then runs on scikit-learn's digits and says so
    fallback: Literal["digits"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _named_by_file(cls, tree: Any) -> Any:
        # a user's file needs no name of its own: it is shown under its file name
        if isinstance(tree, dict) and tree.get("format") in ("npz", "csv", "image-folder") and "name" not in tree \
                and isinstance(tree.get("path"), str):
            tree = {**tree, "name": Path(tree["path"]).stem or "data"}
        return tree

    @property
    def kind(self) -> str:
        """How the data is read: "idx" (the IDX files, or their digits fallback: data.datasets), "bundled"
        (scikit-learn's tables), or one of the other formats (data.own)."""
        if self.format is not None:
            return self.format
        return "bundled" if self.name in TABLE_NAMES else "cifar10" if self.name == "cifar10" else "idx"

    @model_validator(mode="after")
    def _fits_format(self) -> "Data":
        if self.format is None and self.name not in BUILT_IN:
            raise ValueError(f"data.name = {self.name!r} is not a built-in dataset ({', '.join(BUILT_IN)}); for your own "
                             "data set data.format (npz, csv, image-folder, cifar10) and data.path (README, 'Your own data')")
        if self.format == "idx" and self.name not in IDX_NAMES:
            raise ValueError(f"data.format = \"idx\" reads {' and '.join(IDX_NAMES)}, not data.name = {self.name!r}")
        if self.kind in ("npz", "csv", "image-folder") and self.path is None:
            raise ValueError(f"data.format = {self.kind!r} needs data.path, the file or folder to read")
        if self.kind == "csv" and self.label is None:
            raise ValueError("data.format = \"csv\" needs data.label, the column holding each row's class")
        for key, formats in ONLY_FOR.items():
            if getattr(self, key) not in (None, []) and self.kind not in formats:
                raise ValueError(f"data.{key} applies to data.format = {' or '.join(map(repr, formats))} only, "
                                 f"not to {self.kind!r} data; remove it")
        if self.fallback is not None and self.kind != "idx":
            raise ValueError("data.fallback replaces MNIST or Fashion-MNIST files that cannot be found; remove it "
                             f"for {self.kind!r} data")
        return self
