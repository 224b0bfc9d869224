"""Bad own data stops before training, naming the file or key and the fix: exit 2 for the config,
1 for the data, never a traceback (conftest.invoke), and no run directory left behind."""

import re

import numpy as np
import pytest

from test_own_data import digits, image_folder, run, table_csv


def csv(tmp_path, text: str) -> dict:
    (tmp_path / "t.csv").write_text(text)
    return {"format": "csv", "path": str(tmp_path / "t.csv"), "label": "y"}


ROWS = "".join(f"{i % 3},{i},{2 * i}\n" for i in range(30))


@pytest.mark.parametrize(("make", "code", "expected"), [
    (lambda p: {**csv(p, "y,a,b\n" + ROWS), "label": "class"}, 2,
     "data.label = 'class': .*t.csv has no such column; its columns are y, a, b"),
    (lambda p: {**csv(p, "y,a,b\n" + ROWS), "drop": ["c"]}, 2, "data.drop = 'c'"),
    (lambda p: csv(p, "y,a,b\n" + ROWS + "1,x7,3\n"), 1,
     r"t.csv: feature column 'a' is not numeric \('x7' on line 32\); encode it as numbers, or list it in data.drop"),
    (lambda p: csv(p, "y,a,b\n" + ROWS + "1,,3\n"), 1, "column 'a' has 1 empty or NaN cells, the first on line 32; fill"),
    (lambda p: csv(p, "y,a,b\n" + ROWS + "1,nan,3\n"), 1, "column 'a' has 1 empty or NaN cells"),
    (lambda p: csv(p, "y,a,b\n" + ROWS + ",1,3\n"), 1, "column 'y' has 1 empty"),
    (lambda p: csv(p, "y\n" + "1\n2\n" * 10), 1, "no feature column is left"),
    (lambda p: {**csv(p, "y,a,b\n" + ROWS), "test_path": str(p / "test.csv")}, 1, "data.test_path = .*test.csv.*no such file"),
    (lambda p: {**csv(p, "y,a,b\n" + ROWS), "path": str(p / "nothing.csv")}, 1, "data.path = .*nothing.csv.*no such file"),
])
def test_bad_tables(tmp_path, make, code, expected):
    result, out = run(tmp_path, make(tmp_path), model="tabular")
    assert result.exit_code == code, result.output
    assert re.search(expected, result.output.replace("\n", " ")), result.output
    assert not out.exists()


def refused(tmp_path, data, code, expected, **more):
    result, out = run(tmp_path, data, **more)
    assert result.exit_code == code, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_labels_outside_the_classes(tmp_path):
    data = csv(tmp_path, "y,a,b\n" + ROWS)
    (tmp_path / "test.csv").write_text("y,a,b\n0,1,2\n7,1,2\n")
    refused(tmp_path, {**data, "test_path": str(tmp_path / "test.csv")}, 1,
            "test.csv has labels outside the training classes (7); the classes are 0, 1, 2", model="tabular")


def test_a_client_column_naming_one_client(tmp_path):
    data = {**csv(tmp_path, "y,site,a\n" + "".join(f"{i % 2},north,{i}\n" for i in range(20))), "client": "site"}
    refused(tmp_path, data, 1, "data.client = 'site' names one client only ('north')", model="tabular",
            partition={"name": "natural"})


def test_natural_partition_counts_must_match_the_clients(tmp_path):
    table_csv(tmp_path / "s.csv")
    data = {"format": "csv", "path": str(tmp_path / "s.csv"), "label": "diagnosis", "drop": ["id"], "client": "site"}
    refused(tmp_path, data, 2, "the data has 3 clients (east, north, south) but the clients groups add up to 2",
            model="tabular", partition={"name": "natural"})
    refused(tmp_path, data, 2, "clients.N.names: 'west' holds no rows of the data", model="tabular",
            partition={"name": "natural"}, clients=[{"names": ["west"]}, {"count": 2}])


def test_natural_partition_needs_data_that_names_its_clients(tmp_path):
    images, labels = digits()
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels)
    refused(tmp_path, {"format": "npz", "path": str(tmp_path / "d.npz")}, 2,
            'partition.name = "natural" needs data that says which client holds each sample', partition={"name": "natural"})


def test_npz_without_x_train(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((10, 8, 8)), y_train=np.zeros(10))
    refused(tmp_path, {"format": "npz", "path": str(tmp_path / "d.npz")}, 1,
            "d.npz has no array x_train (it holds images, y_train); save the training samples as x_train")


def test_image_profiles_on_a_table_are_refused(tmp_path):
    images, labels = digits()
    np.savez(tmp_path / "d.npz", x_train=images.reshape(-1, 64).astype(float), y_train=labels)
    refused(tmp_path, {"format": "npz", "path": str(tmp_path / "d.npz")}, 2,
            "clients.0.profile: profile 'blur' applies to images, and this data is a table; its profiles: clean, "
            "feature_noise, missing", model="tabular", clients=[{"count": 2, "profile": {"name": "blur", "sigma": 1.0}}])


def test_a_file_that_is_not_an_image(tmp_path):
    image_folder(tmp_path / "images")
    (tmp_path / "images" / "3" / "notes.png").write_text("not a picture")
    refused(tmp_path, {"format": "image-folder", "path": str(tmp_path / "images")}, 1,
            "notes.png is not an image Pillow can read (PNG, JPEG, ...); remove it or replace it")


def test_a_truncated_image(tmp_path):
    image_folder(tmp_path / "images", size=(64, 64))
    png = tmp_path / "images" / "3" / "3.png"
    png.write_bytes(png.read_bytes()[:200])
    refused(tmp_path, {"format": "image-folder", "path": str(tmp_path / "images")}, 1,
            "3.png is a damaged or truncated image")


def test_images_of_different_sizes_need_image_size(tmp_path):
    image_folder(tmp_path / "images")
    image_folder(tmp_path / "big", n=1, size=(16, 12))
    (tmp_path / "big" / "0" / "0.png").rename(tmp_path / "images" / "0" / "big.png")
    refused(tmp_path, {"format": "image-folder", "path": str(tmp_path / "images")}, 1,
            "set data.image_size = [height, width] to resize them all")


@pytest.mark.parametrize(("data", "expected"), [
    ({"name": "cifar100"}, "data.name = 'cifar100' is not a built-in dataset"),
    ({"format": "npz"}, "data.format = 'npz' needs data.path"),
    ({"format": "csv", "path": "t.csv"}, "needs data.label"),
    ({"name": "mnist", "label": "y"}, "data.label applies to data.format = 'csv' only"),
    ({"format": "idx", "name": "digits"}, "data.format = \"idx\" reads mnist and fashion-mnist"),
    ({"format": "image-folder", "path": "x", "channels": 2}, "data.channels: Input should be 1 or 3"),
])
def test_bad_data_keys(tmp_path, data, expected):
    refused(tmp_path, data, 2, expected)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    from fedbridge.data import tables
    from fedbridge.errors import ConfigError

    monkeypatch.setattr(tables.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs pyarrow: pip install pyarrow \(or save the table as .csv\)"):
        tables.read_table(tmp_path / "t.parquet", "y", [], None)
