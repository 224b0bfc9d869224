"""Faults named, nothing lost: a full disk, a read-only filesystem or a permission error while a run
writes, and SIGTERM or SIGHUP, each end with a message naming the file or signal and the resume
command, no traceback; `fedbridge run --resume` then ends exactly as an uninterrupted run."""

import errno
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from conftest import CONFIGS, invoke as run
from fedbridge import results

SETTINGS = ["--set", "data.name=digits", "--set", "partition.sizes=[300,300]", "--set", "train.rounds=6",
            "--set", 'baselines=["local"]']
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save on a full disk


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run("run", CONFIGS / "seed.toml", *SETTINGS, "--out", out, "--quiet").exit_code == 0
    return results.read_metrics(out)


def failing_after(calls: int, error: BaseException, real, when=lambda *args, **kwargs: True):
    """`real`, which raises `error` from its `calls`-th call on (counting the calls `when` picks)."""
    count = 0

    def fake(*args, **kwargs):
        nonlocal count
        if when(*args, **kwargs):
            count += 1
            if count >= calls:
                raise error
        return real(*args, **kwargs)

    return fake


def resumes_to(out, reference) -> None:
    resumed = run("run", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert results.read_metrics(out) == reference


@pytest.mark.parametrize("target, error, file, reason", [
    ("open", OSError(errno.ENOSPC, "No space left on device"), "metrics.jsonl", "the disk is full (ENOSPC)"),
    ("torch.save", OSError(errno.EROFS, "Read-only file system"), "checkpoint.pt", "the filesystem is read-only (EROFS)"),
    ("mkstemp", PermissionError(errno.EACCES, "Permission denied"), "checkpoint.pt", "permission denied (EACCES)"),
    # torch loses the errno; with room left on the disk it is not put down to a full one
    ("torch.save", RuntimeError(TORCH_FULL), "checkpoint.pt", f"torch.save failed ({TORCH_FULL})"),
], ids=["disk full on append", "read-only filesystem", "permission denied", "torch.save fails with room left"])
def test_a_failed_write_names_the_file_and_how_to_resume_and_loses_nothing(
        tmp_path, monkeypatch, reference, target, error, file, reason):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if target == "open":  # the second round's metrics append
            m.setattr(results, "open", failing_after(3, error, open, lambda path, mode="r", **kw: mode == "a"),
                      raising=False)
        elif target == "torch.save":  # the second round's checkpoint
            m.setattr(torch, "save", failing_after(2, error, torch.save))
        else:  # the second round's checkpoint (the first file made in the run directory is config.toml)
            m.setattr(tempfile, "mkstemp", failing_after(3, error, tempfile.mkstemp, lambda **kw: kw.get("dir") == out))
        failed = run("run", CONFIGS / "seed.toml", *SETTINGS, "--out", out)
    assert failed.exit_code == 1, failed.output
    assert f"error: cannot write {out / file}: {reason}" in failed.output
    assert f"continue from the last finished round with: fedbridge run --resume {out}" in failed.output
    assert not (out / results.SUMMARY).exists()
    resumes_to(out, reference)


def fill(folder) -> None:
    """Take every free byte of the filesystem that holds `folder`."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC


def test_a_real_full_disk_mid_run_and_resume_while_still_full(tmp_path, monkeypatch, reference):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        out = disk / "run"
        save_checkpoint = results.save_checkpoint

        def filling(run_dir, checkpoint):
            if checkpoint["method"] == "fedavg" and checkpoint["round"] == 2:
                fill(disk)
            save_checkpoint(run_dir, checkpoint)

        with monkeypatch.context() as m:
            m.setattr(results, "save_checkpoint", filling)
            full = run("run", CONFIGS / "seed.toml", *SETTINGS, "--out", out)
        assert full.exit_code == 1, full.output
        assert f"error: cannot write {out}/" in full.output and "the disk is full (ENOSPC)" in full.output
        assert f"fedbridge run --resume {out}" in full.output

        still = run("run", "--resume", out)
        assert still.exit_code == 1 and "the disk is full (ENOSPC)" in still.output, still.output
        assert f"fedbridge run --resume {out}" in still.output

        (disk / "filler").unlink()
        resumes_to(out, reference)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_a_run_cleanly_and_it_resumes(tmp_path, reference, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedbridge.cli", "run", CONFIGS / "seed.toml", *SETTINGS, "--out", out, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (max((r["round"] for r in results.read_metrics(out) if r["method"] == "fedavg"), default=0) < 2
               and proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before the test could stop it"
        proc.send_signal(sig)
        _, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, errors
    name = signal.Signals(sig).name
    assert f"stopped by {name}; to continue from the last finished round: fedbridge run --resume {out}" in errors
    assert "Traceback" not in errors
    resumes_to(out, reference)
