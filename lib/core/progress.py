"""Progress bars: tqdm on a terminal; sparse, readable lines when the output is a file or a pipe.

With output redirected (overnight studies, CI logs) tqdm would write a carriage-return update many
times a second, all on one "line" of the log file. There a bar instead prints one plain line at most
every ``LOG_INTERVAL_S`` seconds (and when it closes), each ending in a newline; a loop that ends
within its first ten seconds prints nothing.
"""
import sys

from tqdm.auto import tqdm as _tqdm

LOG_INTERVAL_S = 60.0


class _Lines:
    """A file wrapper that turns tqdm's carriage-return refreshes into separate lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "")
        if text.strip():
            self.stream.write(text.rstrip("\n") + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream=None) -> bool:
    """Whether progress goes to an interactive terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm`` on a terminal; otherwise the same bar writing a line every LOG_INTERVAL_S seconds."""
    stream = kwargs.pop("file", None) or sys.stderr
    if is_terminal(stream) or kwargs.get("disable"):
        return _tqdm(*args, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    kwargs.setdefault("delay", LOG_INTERVAL_S / 6)  # loops shorter than this print nothing
    kwargs["leave"] = True
    return _tqdm(*args, file=_Lines(stream), ascii=True, ncols=100, dynamic_ncols=False, position=0, **kwargs)
