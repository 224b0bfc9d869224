"""A user's own data end to end: each [data] format, written small by the test (digits-sized), run
through `fedbridge run` for two rounds; the CIFAR-10 reader on an archive in the official layout;
the hospitals preset on scikit-learn's bundled breast-cancer data."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import tomli_w
from PIL import Image

from conftest import CONFIGS, invoke
from fedbridge.data import cifar

BASE = {
    "name": "own",
    "baselines": ["local"],
    "clients": [{"count": 2}],
    "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "rounds": 2},
    "eval": {"cross_clients": False},
}


def digits(n: int = 240):
    """The first n of scikit-learn's 8x8 digits as uint8 images [n, 8, 8] and labels [n]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images[:n] * 255 / 16).astype(np.uint8), bunch.target[:n]


def run(tmp_path, data: dict, **more):
    config = tmp_path / "own.toml"
    config.write_text(tomli_w.dumps({**BASE, "data": data, **more}))
    out = tmp_path / "run"
    return invoke("run", config, "--out", out, "--quiet"), out


def summary(out):
    return json.loads((out / "summary.json").read_text())


def ran(result, out):
    assert result.exit_code == 0, result.output
    return summary(out)


def test_npz_table_with_its_own_test_split(tmp_path):
    images, labels = digits()
    np.savez(tmp_path / "d.npz", x_train=images[:200].reshape(200, 64) / 16.0, y_train=labels[:200],
             x_test=images[200:].reshape(40, 64) / 16.0, y_test=labels[200:])
    s = ran(*run(tmp_path, {"format": "npz", "path": str(tmp_path / "d.npz")}, model="tabular"))
    assert s["dataset"] == "d" and s["input_shape"] == [64] and s["common_test"] is False
    assert s["class_names"] == [str(k) for k in range(10)]


def test_npz_channels_last_images_hold_out_a_common_test_set(tmp_path):
    images, labels = digits()
    rgb = np.repeat(images[..., None], 3, axis=-1)  # [N, 8, 8, 3]
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=labels)
    result, out = run(tmp_path, {"format": "npz", "path": str(tmp_path / "rgb.npz")})
    s = ran(result, out)
    assert s["input_shape"] == [3, 8, 8] and s["common_test"] is True
    shown = invoke("show", out).output
    assert "common test" in shown and "clean test" not in shown and "held out of the data itself" in shown
    # round(20%) of each class's rows held out
    held = sum(round(0.2 * n) for n in np.bincount(labels))
    assert f"rgb.npz; common test set: {held} rows held out" in s["data_source"]


def table_csv(path, n=240, clients=("north", "south", "east")):
    images, labels = digits(n)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    lines = ["id,site,diagnosis," + ",".join(f"f{j}" for j in range(64))]
    for i in range(n):
        lines.append(f"{i},{clients[i % len(clients)]},{names[labels[i]]}," + ",".join(map(str, images[i].ravel())))
    path.write_text("\n".join(lines) + "\n")


def test_csv_natural_partition_names_the_clients(tmp_path):
    table_csv(tmp_path / "sites.csv")
    data = {"format": "csv", "path": str(tmp_path / "sites.csv"), "label": "diagnosis", "drop": ["id"], "client": "site"}
    clients = [{"names": ["south"], "profile": {"name": "feature_noise", "sigma": 1.0}}, {"count": 2}]
    result, out = run(tmp_path, data, model="tabular", partition={"name": "natural"}, clients=clients)
    s = ran(result, out)
    # south first (named), then the others in sorted order: east, north
    assert [(r["client"], r["client_name"]) for r in s["table"] if r["test_set"] == "own" and r["method"] == "local"] == [
        (1, "south"), (2, "east"), (3, "north")]
    assert s["class_names"] == sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    shown = invoke("show", out).output
    assert "south" in shown and "feature_noise(sigma=1.0)" in shown and "classes: eight, five" in shown
    assert invoke("report", out).exit_code == 0
    page = (out / "report.html").read_text()
    assert "south" in page and "common test" in page and "sample images per client" not in page  # a table


def test_csv_with_a_test_path_and_an_iid_partition(tmp_path):
    table_csv(tmp_path / "train.csv", 200)
    table_csv(tmp_path / "test.csv", 60)
    data = {"format": "csv", "path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv"),
            "label": "diagnosis", "drop": ["id"], "client": "site"}
    s = ran(*run(tmp_path, data, model="tabular", clients=[{"count": 2, "profile": {"name": "missing", "rate": 0.2}}]))
    assert s["common_test"] is False and s["input_shape"] == [64]  # site is no feature


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    table_csv(tmp_path / "t.csv")
    pd.read_csv(tmp_path / "t.csv").to_parquet(tmp_path / "t.parquet")
    ran(*run(tmp_path, {"format": "csv", "path": str(tmp_path / "t.parquet"), "label": "diagnosis", "drop": ["id", "site"]},
             model="tabular"))


def image_folder(root, n=120, by_client=False, size=(8, 8)):
    images, labels = digits(n)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / (f"site{i % 2}" if by_client else "") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize(size).save(folder / f"{i}.png")


def test_image_folder(tmp_path):
    image_folder(tmp_path / "images")
    result, out = run(tmp_path, {"format": "image-folder", "path": str(tmp_path / "images"), "image_size": [6, 6],
                      "channels": 3}, clients=[{"count": 2, "profile": {"name": "occlusion", "size": 2}}])
    s = ran(result, out)
    assert s["input_shape"] == [3, 6, 6] and s["class_names"] == [str(k) for k in range(10)]
    result = invoke("report", out)
    assert result.exit_code == 0 and "sample images per client" in (out / "report.html").read_text()


def test_image_folder_of_client_folders(tmp_path):
    image_folder(tmp_path / "images", by_client=True)
    s = ran(*run(tmp_path, {"format": "image-folder", "path": str(tmp_path / "images")}, partition={"name": "natural"}))
    assert {r["client_name"] for r in s["table"]} == {"site0", "site1"} and s["input_shape"] == [1, 8, 8]


def cifar_archive(path, per_batch=20):
    """A CIFAR-10 archive in the official layout, with `per_batch` random images in each batch."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        def add(name, content):
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        add(cifar.META, {b"label_names": names, b"num_vis": 3072})
        for name in [*cifar.TRAIN, cifar.TEST]:
            add(name, {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                       b"labels": [int(k) for k in np.arange(per_batch) % 10], b"batch_label": name.encode()})


def test_cifar10_reader_on_the_official_layout(tmp_path):
    cifar_archive(tmp_path / "cifar.tar.gz")
    train, test = cifar.read_cifar(tmp_path / "cifar.tar.gz")
    assert train.samples.shape == (100, 3, 32, 32) and test.samples.shape == (20, 3, 32, 32)
    assert train.class_names[0] == "airplane" and list(train.labels[:3]) == [0, 1, 2]
    s = ran(*run(tmp_path, {"name": "cifar10", "path": str(tmp_path / "cifar.tar.gz")}))
    assert s["input_shape"] == [3, 32, 32] and s["class_names"][9] == "truck" and s["common_test"] is False


def test_cifar10_canonical_archive_is_md5_checked(tmp_path):
    cifar_archive(tmp_path / cifar.ARCHIVE)
    result, out = run(tmp_path, {"name": "cifar10", "path": str(tmp_path / cifar.ARCHIVE)})
    assert result.exit_code == 1 and "is not the official CIFAR-10 archive" in result.output and not out.exists()


def test_cifar10_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    (folder / cifar.META).write_bytes(pickle.dumps(print))  # a pickle that names a function
    result, out = run(tmp_path, {"name": "cifar10", "path": str(tmp_path)})
    assert result.exit_code == 1 and "builtins.print" in result.output and not out.exists()


def test_hospitals_preset_on_the_bundled_breast_cancer_data(tmp_path):
    out = tmp_path / "run"
    s = ran(invoke("run", CONFIGS / "hospitals.toml", "--set", "train.rounds=2", "--out", out, "--quiet"), out)
    assert s["dataset"] == "breast-cancer" and s["input_shape"] == [30] and s["class_names"] == ["malignant", "benign"]
    assert s["common_test"] is True and len({r["client"] for r in s["table"]}) == 3
