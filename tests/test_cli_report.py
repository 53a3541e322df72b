"""`trainguard report` end to end: one self-contained HTML file that a real headless Chromium
draws (the screenshot's pixels are counted), and Markdown."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.pngread import count_color, read_png
from tests.reach_runs import KL_FROM, NAN_STEP, grpo_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


def _broken_run(tmp_path: Path) -> Path:
    run = grpo_run(tmp_path / "grpo-run")
    with open(run / "events.rank0.jsonl", "a") as handle:
        handle.write("this is not json\n")
    return run


def screenshot(html: Path, png: Path, tmp_path: Path, width: int = 1240,
               height: int = 2400) -> None:
    """Render ``html`` in headless Chromium, offline, and save a PNG."""
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}",
                    "--proxy-server=127.0.0.1:9",  # anything fetched would fail: offline
                    f"--window-size={width},{height}", f"--screenshot={png}",
                    html.as_uri()], capture_output=True, timeout=120, check=True)


def test_report_html_is_one_file_with_no_network_reference(tmp_path: Path):
    """No script, no link, no image or font source, no http(s) address: it opens offline."""
    run = _broken_run(tmp_path)
    out = tmp_path / "report.html"
    result = run_cli("report", str(run), "-o", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    for forbidden in ("<script", "<link", "<img", "<iframe", "@import", "url(", "http://",
                      "https://", "src="):
        assert forbidden not in html, forbidden
    assert html.count("<svg") == 8  # a plot per watched metric present in the run
    assert "grpo.kl_blowup" in html and "common.nonfinite_loss" in html
    assert "GRPOTrainer" in html  # run metadata
    assert "malformed_json" in html  # ingest health by reason


@needs_chromium
def test_chromium_draws_the_plots_alert_markers_and_stop(tmp_path: Path):
    """A real browser draws each rank's line (blue, orange) and the stop in red."""
    run = _broken_run(tmp_path)
    out = tmp_path / "report.html"
    assert run_cli("report", str(run), "-o", str(out)).returncode == 0
    png = tmp_path / "report.png"
    screenshot(out, png, tmp_path)
    width, height, rows = read_png(png.read_bytes())
    assert (width, height) == (1240, 2400)
    blue = count_color(rows, (0x1F, 0x77, 0xB4), 30)
    orange = count_color(rows, (0xFF, 0x7F, 0x0E), 30)
    stop_red = count_color(rows, (0xB0, 0x00, 0x20), 30)
    assert blue > 2000 and orange > 2000, (blue, orange)
    assert stop_red > 1500, stop_red  # a 2.5 px line through each of the plots, labels, crosses


def test_report_markdown_has_verdict_alerts_metrics_and_health(tmp_path: Path):
    """-o report.md: the verdict, the alerts with what to do, a row per metric and rank."""
    run = _broken_run(tmp_path)
    out = tmp_path / "report.md"
    assert run_cli("report", str(run), "-o", str(out)).returncode == 0
    text = out.read_text()
    assert "**ALERT**" in text and "Trainer: grpo" in text
    # grpo.kl_blowup fires once KL has been over 1.0 for 3 logged steps (its `for`).
    assert re.search(rf"\| high \| `grpo.kl_blowup` \| {KL_FROM + 2} \|", text)
    assert f"| critical | `common.nonfinite_loss` | {NAN_STEP} | 1 |" in text
    assert "| `kl` | 0 | 300 |" in text and "| `kl` | 1 | 300 |" in text
    assert "| malformed_json | 1 |" in text


def test_report_of_several_runs_has_a_section_each(tmp_path: Path):
    """Two runs, one file: a section for each with its own verdict."""
    bad = grpo_run(tmp_path / "bad")
    good = grpo_run(tmp_path / "good", steps=50, kl_from=None, nan_step=None)
    out = tmp_path / "both.md"
    assert run_cli("report", str(bad), str(good), "-o", str(out)).returncode == 0
    text = out.read_text()
    assert f"## {bad}: **ALERT**" in text and f"## {good}: **CLEAN**" in text


def test_report_to_an_unknown_suffix_is_refused(tmp_path: Path):
    """-o report.pdf: exit 1 and the formats it writes."""
    run = grpo_run(tmp_path / "run", steps=5)
    result = run_cli("report", str(run), "-o", str(tmp_path / "report.pdf"))
    assert result.returncode == 1
    assert ".html or .md" in result.stderr.decode()
