"""Progress bars: live on a terminal, a line every 10 % (no carriage returns) in a file."""

import io
import os
import subprocess
import sys

from specdenoise import progress


def test_lines_every_tenth_without_carriage_returns():
    out = io.StringIO()
    with progress.bar(1000, "simulate", "spec", stream=out) as b:
        for _ in range(250):
            b.update(4)
        b.set_postfix(rate="75/s")
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 10
    assert lines[0].startswith("simulate: 10 % (100/1000 spec, ")
    assert lines[-1].startswith("simulate: 100 % (1000/1000 spec, ")


def test_big_steps_and_an_early_stop_report_once_each():
    out = io.StringIO()
    b = progress.bar(10, "evaluate", "spec", stream=out)
    b.update(7)  # 70 %: one line, not seven
    b.close()  # stopped early: a last line says where
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(ln.startswith("evaluate: 70 % (7/10") for ln in lines)


def test_disabled_and_auto_draw_nothing_in_a_file():
    out = io.StringIO()
    for enabled in (False, None):
        with progress.bar(10, "x", stream=out, enabled=enabled) as b:
            b.update(10)
        assert list(progress.iterate(range(3), "y", enabled=enabled)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_live_bar_on_a_terminal():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        b = progress.bar(10, "x", stream=tty, enabled=None)
        assert type(b).__module__.startswith("tqdm")
        b.update(10)
        b.close()
    os.close(master)


def test_simulate_log_has_a_line_per_tenth(small_grid, tmp_path):
    """The real command with its output going to a file, as in a batch job's log."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "specdenoise.cli", "simulate", "--n", "40",
                            "--chunk-size", "2", "--grid", str(small_grid), "--out",
                            str(tmp_path / "s.zarr"), "--workers", "1"],
                           stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    bars = [ln for ln in text.splitlines() if ln.startswith("simulate: ")]
    assert "\r" not in text and len(bars) == 10, text
