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


def test_a_study_bar_in_a_log_prints_sparse_lines_not_one_per_trial(monkeypatch, capsys):
    """run_trials redraws its bar at the bar's pace: 30 quick trials in a log file are one closing line, not 30."""
    import optuna

    from lib.core.study import run_trials
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.5)
    study = optuna.create_study(direction="maximize")

    def objective(trial):
        time.sleep(0.02)
        return trial.suggest_float("x", 0, 1)
    run_trials(study, objective, 30, desc="study s")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study s")]
    assert 1 <= len(lines) <= 4 and "30/30" in lines[-1], lines
