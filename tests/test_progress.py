"""Progress bars: plain sparse lines when the output is not a terminal (no carriage-return floods in logs)."""
import io
import time

from lib.core import progress


def test_redirected_output_gets_sparse_lines_without_carriage_returns(monkeypatch):
    out = io.StringIO()
    for _ in progress.tqdm(range(20_000), desc="work", file=out):
        pass  # a quick loop: less than the 10 s delay, so nothing at all is printed
    assert out.getvalue() == ""
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    out = io.StringIO()
    for _ in progress.tqdm(range(6), desc="slow", file=out):
        time.sleep(0.05)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n") and 2 <= len(lines) <= 8
    assert all(line.startswith("slow:") for line in lines) and "6/6" in lines[-1]


def test_a_terminal_keeps_the_interactive_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    for _ in progress.tqdm(range(3), desc="t", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
