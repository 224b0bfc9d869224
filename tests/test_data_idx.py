"""Tests for loading IDX datasets (fedbridge.data): IDX parsing, verification, search order, cache and download.

Most tests use a tiny fake "mnist" (4 train / 2 test images of 2x3 pixels) with DATASETS patched
to its MD5s, so every expected value can be checked by hand. The integration tests at the end
read the real files from FEDBRIDGE_DATA.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import re
import socket
import stat
import struct
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import CONFIGS, invoke
from fedbridge.data import catalog, datasets, idx, sources
from fedbridge.errors import DataError

REAL_DATA = os.environ.get("FEDBRIDGE_DATA")
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = idx.FILES


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


ARRAYS = {
    TRAIN_IMAGES: np.arange(24, dtype=np.uint8).reshape(4, 2, 3),
    TRAIN_LABELS: np.array([0, 1, 2, 3], dtype=np.uint8),
    TEST_IMAGES: (np.arange(12, dtype=np.uint8) + 100).reshape(2, 2, 3),
    TEST_LABELS: np.array([5, 6], dtype=np.uint8),
}
CONTENT = {stem: idx_bytes(a) for stem, a in ARRAYS.items()}


def write_fake(folder: Path, *, gz: bool = True, content: dict[str, bytes] = CONTENT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in content.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


def assert_is_fake(ds: datasets.Dataset) -> None:
    assert ds.name == "mnist"
    np.testing.assert_array_equal(ds.train_images, ARRAYS[TRAIN_IMAGES])
    np.testing.assert_array_equal(ds.test_images, ARRAYS[TEST_IMAGES])
    assert ds.train_labels.tolist() == [0, 1, 2, 3] and ds.train_labels.dtype == np.int64
    assert ds.test_labels.tolist() == [5, 6] and ds.test_labels.dtype == np.int64


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, FEDBRIDGE_DATA or /usr/share/datasets."""
    monkeypatch.setenv("FEDBRIDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDBRIDGE_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")


@pytest.fixture
def fake(monkeypatch):
    """Make "mnist" mean the fake dataset: its MD5s, and no mirrors unless a test sets some."""
    spec = dataclasses.replace(catalog.DATASETS["mnist"], md5={s: md5(d) for s, d in CONTENT.items()}, mirrors=())
    monkeypatch.setitem(catalog.DATASETS, "mnist", spec)

    def set_mirrors(*mirrors: str) -> None:
        monkeypatch.setitem(catalog.DATASETS, "mnist", dataclasses.replace(spec, mirrors=mirrors))

    return set_mirrors


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


# --- read_idx ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_hand_made(tmp_path, gz):
    # Header 00 00 08 02 | 00 00 00 02 | 00 00 00 03, then six pixels.
    data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    path = tmp_path / "tiny.idx"  # no .gz suffix either way: detection is by magic bytes
    path.write_bytes(gzip.compress(data) if gz else data)
    out = idx.read_idx(path)
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 2, 3], [4, 5, 255]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "truncated: header says 13 bytes, file has 10"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 7, 7]), "trailing bytes: header says 9 bytes, file has 10"),
        (b"<html>404</html>", "not an IDX file"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "only unsigned bytes"),
        (b"\x1f\x8b" + b"garbage" * 10, "not a valid gzip file"),
        # 200 KB of incompressible pixels, gzipped, cut in half: the header survives, the pixels do not.
        (gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8)))[:100_000],
         "truncated gzip stream (truncated: header says 200008 bytes"),
        (b"", "not an IDX file"),
    ],
    ids=["truncated", "trailing", "html", "dtype", "garbage-gz", "truncated-gz", "empty"],
)
def test_read_idx_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad-file"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


# --- verification and search order --------------------------------------------------------


def test_wrong_md5_names_file_and_both_digests_and_does_not_fall_through(tmp_path, monkeypatch, fake):
    bad = dict(CONTENT, **{TRAIN_LABELS: idx_bytes(np.array([0, 1, 2, 9], dtype=np.uint8))})
    write_fake(tmp_path / "given" / "mnist", content=bad)
    # A good copy later in the search order must not hide the bad one.
    monkeypatch.setenv("FEDBRIDGE_DATA", str(write_fake(tmp_path / "env" / "mnist")))
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", tmp_path / "given", download=False)
    message = str(err.value)
    assert str(tmp_path / "given" / "mnist" / f"{TRAIN_LABELS}.gz") in message
    assert md5(CONTENT[TRAIN_LABELS]) in message and md5(bad[TRAIN_LABELS]) in message
    assert "FEDBRIDGE_DATA" in message  # the fix


def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch, fake):
    given = write_fake(tmp_path / "given" / "mnist")
    env = write_fake(tmp_path / "env", gz=False)  # the dataset folder itself, not its parent
    monkeypatch.setenv("FEDBRIDGE_DATA", str(env))

    ds = datasets.load_dataset("mnist", tmp_path / "given")  # parent of mnist/
    assert_is_fake(ds)
    assert ds.source == f"{given} (--data-dir)"

    ds = datasets.load_dataset("mnist")
    assert_is_fake(ds)
    assert ds.source == f"{env} (FEDBRIDGE_DATA)"

    # Both loads filled the cache with the uncompressed bytes.
    cache = tmp_path / "cache" / "mnist"
    assert {p.name for p in cache.iterdir()} == set(idx.FILES)
    monkeypatch.delenv("FEDBRIDGE_DATA")
    ds = datasets.load_dataset("mnist", download=False)
    assert_is_fake(ds)
    assert ds.source == f"{cache} (cache)"


def test_system_folder_is_searched_last(tmp_path, fake):
    write_fake(tmp_path / "system" / "mnist")
    ds = datasets.load_dataset("mnist", download=False)
    assert_is_fake(ds)
    assert ds.source.endswith("(system)")


def test_nothing_found_and_no_download_lists_every_location(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("FEDBRIDGE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", download=False)
    message = str(err.value)
    for place in ("--data-dir: not given", "FEDBRIDGE_DATA", "cache", "system"):
        assert place in message
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "system" / "mnist") in message
    assert "downloading was turned off" in message


@pytest.mark.parametrize("given", ["partial", "missing", "a file"])
def test_a_given_folder_without_the_dataset_is_an_error_not_skipped(tmp_path, monkeypatch, fake, given):
    env = write_fake(tmp_path / "env" / "mnist")  # complete: it must not be used instead
    monkeypatch.setenv("FEDBRIDGE_DATA", str(env))
    folder = tmp_path / "given"
    if given == "partial":
        write_fake(folder / "mnist", content={TRAIN_IMAGES: CONTENT[TRAIN_IMAGES]})
    elif given == "a file":
        folder.write_text("not a folder")
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", folder, download=False)
    message = str(err.value)
    assert "--data-dir" in message and "FEDBRIDGE_DATA" in message  # where, and the fix
    if given == "partial":
        assert f"{folder / 'mnist'}: 1 of 4 files" in message and f"missing {TRAIN_LABELS}" in message
    else:
        assert f"{folder}: {'folder does not exist' if given == 'missing' else 'not a folder'}" in message


def test_locate_reports_each_location_and_verification(tmp_path, monkeypatch, fake):
    write_fake(tmp_path / "given" / "mnist")
    env = write_fake(tmp_path / "env" / "mnist")
    (env / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(idx_bytes(np.array([9, 9], dtype=np.uint8))))
    monkeypatch.setenv("FEDBRIDGE_DATA", str(tmp_path / "env"))
    found = sources.locate("mnist", tmp_path / "given")
    assert [c.where for c in found] == ["--data-dir", "FEDBRIDGE_DATA", "cache", "system"]
    assert found[0].ok
    assert not found[1].ok and list(found[1].problems) == [TEST_LABELS]
    assert "wrong checksum" in found[1].summary()
    assert found[2].found == {} and "does not exist" in found[3].summary()


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match="mnist, fashion-mnist, digits"):
        datasets.load_dataset("cifar10")


# --- cache ---------------------------------------------------------------------------------


def test_corrupt_cache_entry_is_reported_deleted_and_rebuilt(tmp_path, capsys, fake):
    cache = write_fake(tmp_path / "cache" / "mnist", gz=False)
    entry = cache / TRAIN_IMAGES
    entry.write_bytes(CONTENT[TRAIN_IMAGES][:-1] + b"\x99")  # same size, one pixel changed
    write_fake(tmp_path / "system" / "mnist")

    ds = datasets.load_dataset("mnist", download=False)
    assert_is_fake(ds)
    assert ds.source.endswith("(system)")
    assert str(entry) in capsys.readouterr().err
    assert entry.read_bytes() == CONTENT[TRAIN_IMAGES]  # rebuilt from the source


def test_truncated_cache_entry_is_never_used(tmp_path, capsys, fake):
    cache = write_fake(tmp_path / "cache" / "mnist", gz=False)
    entry = cache / TEST_IMAGES
    entry.write_bytes(CONTENT[TEST_IMAGES][:5])
    with pytest.raises(DataError, match="not found"):
        datasets.load_dataset("mnist", download=False)
    err = capsys.readouterr().err
    assert str(entry) in err and "truncated" in err
    assert not entry.exists()


# --- something else where a data file should be -------------------------------------------


NOT_FILES = {  # how to make each, and how fedbridge names it
    "directory": (Path.mkdir, "is a directory, not an IDX file"),
    "fifo": (os.mkfifo, "is a named pipe (FIFO), not an IDX file"),
    "socket": (lambda p: os.mknod(p, 0o600 | stat.S_IFSOCK), "is a socket, not an IDX file"),
    "loop": (lambda p: p.symlink_to(p.name), "is a symbolic link that loops"),
    "dangling": (lambda p: p.symlink_to("gone"), "is a symbolic link to gone, which does not exist"),
}


@pytest.mark.timeout(60)  # opening a named pipe to read it would wait here for ever
@pytest.mark.parametrize("place", ["--data-dir", "cache"])
@pytest.mark.parametrize("kind", NOT_FILES)
def test_run_and_data_check_say_what_stands_where_a_file_should_be(tmp_path, capsys, fake, place, kind):
    folder = tmp_path / ("given" if place == "--data-dir" else "cache") / "mnist"
    write_fake(folder, gz=False, content={s: d for s, d in CONTENT.items() if s != TRAIN_IMAGES})
    make, says = NOT_FILES[kind]
    make(entry := folder / TRAIN_IMAGES)
    given = ["--data-dir", folder.parent] if place == "--data-dir" else []
    for command in (["run", CONFIGS / "seed.toml", *given, "--out", tmp_path / "run"], ["data", "check", *given]):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert f"{folder}: 3 of 4 files; {entry} {says}" in result.output  # not "missing"
    with pytest.raises(DataError, match=re.escape(f"{entry} {says}")):  # nor when the file is opened
        idx.read_idx(entry)
    if place == "cache":  # with a good copy elsewhere the entry is replaced, but a folder is never deleted
        assert_is_fake(datasets.load_dataset("mnist", write_fake(tmp_path / "good"), download=False))
        assert f"{entry} {says}" in capsys.readouterr().err
        assert entry.is_dir() if kind == "directory" else entry.read_bytes() == CONTENT[TRAIN_IMAGES]


def test_nothing_is_read_past_the_largest_dataset_file(tmp_path, monkeypatch):
    assert idx.MAX_FILE_BYTES >= 47_040_016  # MNIST's train images, the largest file, uncompressed
    monkeypatch.setattr(idx, "MAX_FILE_BYTES", 100)
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(bytes(101))
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(10_000)))
    for name, says in [("zero", "is a character device"), ("big", "is 101 bytes or more, more than any dataset file"),
                       ("bomb.gz", "decompresses to more than 100 bytes")]:
        with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / name))}:? {says}"):
            idx.read_idx(tmp_path / name)


# --- download ------------------------------------------------------------------------------


def test_download_skips_404_mirror_then_caches(tmp_path, server, fake):
    www, base = server
    write_fake(www / "good")
    (www / "empty").mkdir()
    fake(f"{base}empty/", f"{base}good/")

    ds = datasets.load_dataset("mnist", progress=False)
    assert_is_fake(ds)
    cache = tmp_path / "cache" / "mnist"
    assert ds.source == f"{cache} (downloaded from {base}good/)"
    assert all((cache / stem).read_bytes() == data for stem, data in CONTENT.items())

    fake()  # no mirrors: the second load must come from the cache alone
    assert datasets.load_dataset("mnist", download=False).source == f"{cache} (cache)"


def test_download_rejects_wrong_checksum_and_does_not_cache_it(tmp_path, server, fake):
    www, base = server
    bad = dict(CONTENT, **{TEST_IMAGES: idx_bytes(np.zeros((2, 2, 3), dtype=np.uint8))})
    write_fake(www / "bad", content=bad)
    fake(f"{base}bad/")
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", progress=False)
    message = str(err.value)
    assert f"{base}bad/{TEST_IMAGES}.gz" in message and "wrong checksum" in message
    assert md5(bad[TEST_IMAGES]) in message
    assert not (tmp_path / "cache" / "mnist" / TEST_IMAGES).exists()
    # The good files it did get are kept, so a retry only fetches the missing one.
    assert (tmp_path / "cache" / "mnist" / TRAIN_IMAGES).read_bytes() == CONTENT[TRAIN_IMAGES]

    write_fake(www / "good")
    fake(f"{base}bad/", f"{base}good/")
    assert_is_fake(datasets.load_dataset("mnist", progress=False))


def test_unreachable_mirror_fails_fast_with_reason(fake):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake(f"http://127.0.0.1:{port}/")
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", progress=False)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "FEDBRIDGE_DATA" in message and "--data-dir" in message


# --- integration: the real files ----------------------------------------------------------

needs_real = pytest.mark.skipif(not REAL_DATA, reason="set FEDBRIDGE_DATA to the folder holding mnist/ and fashion-mnist/")


@pytest.mark.integration
@needs_real
def test_real_mnist_loads_and_caches_fast(monkeypatch, tmp_path):
    ds = datasets.load_dataset("mnist", Path(REAL_DATA), progress=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == np.uint8
    assert np.bincount(ds.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

    start = time.monotonic()
    cached = datasets.load_dataset("mnist", download=False)
    assert time.monotonic() - start < 1.0
    assert cached.source.endswith("(cache)")
    np.testing.assert_array_equal(cached.train_images, ds.train_images)


@pytest.mark.integration
@needs_real
def test_real_fashion_mnist_loads(monkeypatch):
    monkeypatch.setenv("FEDBRIDGE_DATA", REAL_DATA)
    ds = datasets.load_dataset("fashion-mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10


def test_digits_loads():
    ds = datasets.load_dataset("digits")
    assert ds.train_images.shape == (1437, 8, 8) and ds.test_images.shape == (360, 8, 8)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.max() == 255
    assert ds.train_labels.dtype == np.int64 and len(ds.test_labels) == 360
    assert ds.source == "scikit-learn's bundled 8x8 digits"
