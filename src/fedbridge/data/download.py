"""Downloading a dataset's missing files from its mirrors into the cache, with a progress bar."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fedbridge.data.cache import store
from fedbridge.data import catalog
from fedbridge.data.idx import FILES, Corrupt, decompress, verify

# Short connect/read timeout: an offline machine should fail in seconds, not minutes.
TIMEOUT_S = 20.0
# The real files are < 30 MB compressed; a mirror streaming more than this is broken.
MAX_DOWNLOAD_BYTES = 200 * 2**20


def download_missing(
    name: str, have: dict[str, tuple[np.ndarray, bytes]], cache: Path, progress: bool
) -> tuple[list[str], list[str]]:
    """Download into `have` (and the cache) each file it lacks; return mirrors used and failures."""
    spec = catalog.spec(name)
    used: list[str] = []
    failures: list[str] = []
    unreachable: set[str] = set()  # a mirror that refused a connection is not retried for later files
    with _progress_bar(progress) as bar:
        for stem in FILES:
            if stem in have:
                continue
            for mirror in spec.mirrors:
                url = f"{mirror}{stem}.gz"
                if mirror in unreachable:
                    failures.append(f"{url}: skipped, mirror unreachable")
                    continue
                try:
                    raw = _fetch(url, bar)
                except urllib.error.HTTPError as e:
                    failures.append(f"{url}: HTTP {e.code} {e.reason}")
                    continue
                except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                    unreachable.add(mirror)
                    failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
                    continue
                try:
                    data = decompress(raw)
                    array = verify(name, stem, data)
                except Corrupt as e:
                    failures.append(f"{url}: {e}; rejected, not cached")
                    continue
                have[stem] = (array, data)
                store(cache, stem, data)
                if mirror not in used:
                    used.append(mirror)
                break
            else:
                return used, failures  # no mirror had this file: the rest would not help
    return used, failures


def _fetch(url: str, advance: Callable[[str, int | None, int], None]) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks, size = [], 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise urllib.error.URLError(f"served more than {MAX_DOWNLOAD_BYTES} bytes")
            chunks.append(chunk)
            advance(url, total, len(chunk))
    return b"".join(chunks)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int | None, int], None]]:
    if not enabled:
        yield lambda url, total, n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    tasks: dict[str, object] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:

        def advance(url: str, total: int | None, n: int) -> None:
            if url not in tasks:
                tasks[url] = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            bar.advance(tasks[url], n)  # type: ignore[arg-type]

        yield advance
