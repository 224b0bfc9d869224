"""`fedbridge report`: a self-contained HTML file that a real browser renders with every figure
loaded and filling the page, and the tables as HTML tables; and clear errors for what is not a
finished run."""

import errno
import html
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import CONFIGS, invoke as run

TINY = ["--set", "data.name=digits", "--set", "partition.sizes=[400,400]", "--set", "train.rounds=3",
        "--set", "clients.1.profile={name='symmetric', rate=0.4}"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# added to a copy of the report only: the report itself has no script
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const page = parseFloat(getComputedStyle(document.body).width);
  const headers = [...document.querySelectorAll('table th')].map(th => th.textContent);
  const probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    narrow: images.filter(i => Math.abs(i.getBoundingClientRect().width - page) > 1).map(i => i.alt),
    table: ['alone, own test', 'FedAvg, own test', 'gain', 'pooled, clean test'].every(h => headers.includes(h)),
    tables: [...document.querySelectorAll('table caption')].map(c => c.firstChild.textContent),
  });
  document.body.appendChild(probe);
});
</script></body>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("FEDBRIDGE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (FEDBRIDGE_REQUIRE_BROWSER is set) but not on PATH")
        pytest.skip("chromium not installed: apt-get install -y chromium (.ci/run does it)")
    return found


def browse(tmp_path, *args: str) -> str:
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    result = run("run", CONFIGS / "seed.toml", *TINY, "--seeds", 2, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_report_renders_in_a_browser_with_every_figure_and_the_table(finished_run, tmp_path):
    result = run("report", finished_run, "-o", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 4
    assert "symmetric(rate=0.4)" in page and "torch 2.13.0" in page and 'name = &quot;seed&quot;' in page

    (tmp_path / "probe.html").write_text(page.replace("</body>", PROBE))
    dom = browse(tmp_path, "--virtual-time-budget=10000", "--dump-dom", (tmp_path / "probe.html").as_uri())
    probe = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert probe == {"images": 4, "broken": [], "narrow": [], "table": True, "tables": [
        "seed: what joining the federation changed", "each model on each client's own test data (accuracy %)",
        "noisy-client detection: ROC-AUC of each score against the configured profiles (mean over seeds)"]}

    shot = tmp_path / "report.png"
    browse(tmp_path, "--window-size=1280,2600", f"--screenshot={shot}", (tmp_path / "report.html").as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_report_default_place_and_what_it_refuses(finished_run, tmp_path):
    (finished_run / "report.html").write_text("a report from before the generator tag")  # the run's own: replaced
    assert run("report", finished_run).exit_code == 0
    assert (finished_run / "report.html").stat().st_size > 10_000
    result = run("report", tmp_path)
    assert result.exit_code == 1 and "does not exist" in result.output
    result = run("report", finished_run, "-o", tmp_path / "missing" / "r.html")
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("name", ["summary.json", "weights/seed0-fedavg.pt", "new.html"])
def test_report_never_writes_inside_the_run_but_its_report_html(finished_run, name):
    target = finished_run / name
    before = target.read_bytes() if target.exists() else None
    result = run("report", finished_run, "-o", target)
    assert result.exit_code == 1 and f"cannot write {target}: it is inside {finished_run}" in result.output
    assert "choose another -o" in result.output
    assert (target.read_bytes() if target.exists() else None) == before


def test_report_replaces_an_earlier_report_but_no_other_file(finished_run, tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text("keep = true")
    result = run("report", finished_run, "-o", config)
    assert result.exit_code == 1 and f"{config} exists and is not a fedbridge report" in result.output
    assert config.read_text() == "keep = true"
    earlier = tmp_path / "r.html"
    earlier.write_text('<!DOCTYPE html>\n<html><head><meta name="generator" content="fedbridge 0.0.1">')
    assert run("report", finished_run, "-o", earlier).exit_code == 0
    assert 'content="fedbridge ' in earlier.read_text() and earlier.stat().st_size > 10_000


def test_report_to_a_directory_or_a_read_only_place_says_cannot_write(finished_run, tmp_path, monkeypatch):
    from fedbridge import files

    result = run("report", finished_run, "-o", tmp_path)
    assert result.exit_code == 1 and f"cannot write {tmp_path}: it is a directory; choose another -o" in result.output

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files, "atomic_write", read_only)
    result = run("report", finished_run)
    assert result.exit_code == 1, result.output
    assert f"cannot write {finished_run / 'report.html'}: Read-only file system" in result.output
    assert f"fedbridge report {finished_run} -o FILE" in result.output


def test_without_the_dataset_the_report_says_so_and_draws_the_rest(finished_run, tmp_path, monkeypatch):
    from fedbridge.errors import DataError
    from fedbridge.report import html as report_html

    def missing(exp, data_dir):
        raise DataError("mnist not found in /nowhere; point FEDBRIDGE_DATA at it")

    monkeypatch.setattr(report_html, "resolve_dataset", missing)
    page = report_html.write_report(finished_run, tmp_path / "r.html").read_text()
    assert "Not drawn: mnist not found in /nowhere" in page
    assert page.count("data:image/png;base64,") == 2  # the curves and the gains need no data
