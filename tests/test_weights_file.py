"""A weights file of one model per client, written a chunk of clients at a time, is the file torch.save
writes of them all at once (its pickle byte for byte, every tensor equal, valid CRCs), and writing one
from a store in files holds no more than a chunk of models in memory."""

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from fedbridge import client_state, results, weights_file

STACKED = {"0.weight": torch.arange(5 * 3 * 4, dtype=torch.float32).view(5, 3, 4), "0.bias": -torch.ones(5, 3),
           "bn.num_batches_tracked": torch.arange(5)}  # an int64 entry, as a BatchNorm's state has


def by_torch_save(path):
    torch.save({f"client{i + 1}": {k: p[i].clone() for k, p in STACKED.items()} for i in range(5)}, path)


def test_chunks_of_two_make_torch_saves_file(tmp_path):
    by_torch_save(tmp_path / "a.pt")
    asked = []

    def take(ids):
        asked.append(ids.tolist())
        return {k: p[ids] for k, p in STACKED.items()}

    weights_file.write(tmp_path / "b.pt", 5, take, budget=2 * (48 + 12 + 8))  # a client's model is 68 bytes
    assert asked == [[0], [0, 1], [2, 3], [4]]

    ours, theirs = zipfile.ZipFile(tmp_path / "b.pt"), zipfile.ZipFile(tmp_path / "a.pt")
    assert ours.testzip() is None  # every record's CRC32 holds
    assert [i.filename.split("/", 1)[1] for i in ours.infolist()] == [i.filename.split("/", 1)[1] for i in theirs.infolist()]
    assert ours.read("b/data.pkl") == theirs.read("a/data.pkl")
    loaded, expected = torch.load(tmp_path / "b.pt", weights_only=True), torch.load(tmp_path / "a.pt", weights_only=True)
    assert loaded.keys() == expected.keys()
    for client, model in expected.items():
        for name, p in model.items():
            assert loaded[client][name].dtype == p.dtype and torch.equal(loaded[client][name], p)


def test_a_store_in_files_saves_as_its_rows_do(tmp_path, monkeypatch):
    monkeypatch.setattr(client_state, "MEMORY_BUDGET", 0)  # in files, however small
    with client_state.files_in(tmp_path / "state"):
        store = client_state.create("own", {k: p[:1].float() for k, p in STACKED.items()}, 5)
    store = store.put(torch.tensor([1, 3]), {k: p[[1, 3]].float() for k, p in STACKED.items()})
    assert store.rows is None
    results.weights_path(tmp_path, 0, "ditto").parent.mkdir()
    results.save_weights(tmp_path, 0, "ditto", store)
    saved = results.load_weights(tmp_path, 0, "ditto")
    expected = store.take(torch.arange(5))
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert results.weights_problem(tmp_path, 0, "ditto") is None  # its sha256 recorded


PEAK = """
import json, sys, torch
from pathlib import Path
from fedbridge import client_state, results
client_state.MEMORY_BUDGET = 0
run = Path(sys.argv[1])
results.weights_path(run, 0, "local").parent.mkdir(parents=True)
with client_state.files_in(run / "state"):
    warm_up = client_state.create("small", {"w": torch.zeros(1, 4)}, 3)
    store = client_state.create("own", {"w": torch.zeros(1, 2**18)}, 256)  # 1 MiB a client
results.save_weights(run, 0, "local", warm_up)  # the code's pages in memory, as they are in a run
for lo in range(0, 256, 16):
    ids = torch.arange(lo, lo + 16)
    store = store.put(ids, {"w": ids.float().view(-1, 1).expand(16, 2**18).contiguous()})

def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) from here on
before = kib("VmRSS")
results.save_weights(run, 0, "local", store)
print(json.dumps({"grew_mib": (kib("VmHWM") - before) / 1024}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak memory from /proc (Linux)")
def test_saving_256_mib_of_models_from_files_grows_the_peak_memory_by_at_most_a_chunk(tmp_path):
    # weights_file.write reads 64 MiB of models a time; torch.save would hold all 256 MiB
    out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["grew_mib"] < 100
    saved = torch.load(results.weights_path(tmp_path, 0, "local"), weights_only=True, mmap=True)
    assert len(saved) == 256 and saved["client200"]["w"][0].item() == 199 and saved["client200"]["w"].shape == (2**18,)
