"""Progress without a terminal: plain stderr lines at a steady pace; tqdm on one; --quiet
silences both; the console, metrics.json and report.png count epochs the same way."""
from __future__ import annotations

import itertools
import re
import time

import pytest
from tqdm import tqdm

import reclip
from reclip import progress as progress_module
from reclip.callbacks import epoch_line, final_line
from reclip.cli.main import main
from reclip.progress import LINE_EVERY_S, MIN_GAP_S, progress


class FakeClock:
    """A clock that stands still; ``work(n)`` yields n items, each taking ``step`` seconds."""

    def __init__(self) -> None:
        self.now, self.step = 0.0, 1.0

    def __call__(self) -> float:
        return self.now

    def work(self, n: int):
        for i in range(n):
            self.now += self.step
            yield i


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module, "_clock", clock)
    monkeypatch.setattr(progress_module, "_interactive", lambda: False)
    monkeypatch.setattr(progress_module, "_quiet", False)
    monkeypatch.setattr(progress_module, "HEARTBEAT_S", None)  # only the loop reports: deterministic
    monkeypatch.setattr(progress_module, "_last_line", 0.0)
    return clock


def _lines(text: str, desc: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{desc}:")]


def test_without_a_terminal_a_line_at_least_every_ten_seconds_and_at_the_end(fake_clock, capsys):
    fake_clock.step = 3.0  # 3 s per item: 300 s of work in 100 items
    assert list(progress(fake_clock.work(100), "features x", total=100)) == list(range(100))
    lines = _lines(capsys.readouterr().err, "features x")
    # a line once 10 s have passed (the 4th item at 3 s each: 12 s), ..., then the closing line
    assert lines[0] == "features x: 4/100 batches (4%), 12 s, about 288 s left"
    assert lines[-1] == "features x: 100/100 batches done in 300 s"
    seconds = [int(re.search(r", (\d+) s", line).group(1)) for line in lines[:-1]] + [300]
    gaps = [b - a for a, b in zip([0] + seconds, seconds)]
    assert max(gaps) <= LINE_EVERY_S + fake_clock.step and min(gaps) >= MIN_GAP_S


def test_every_tenth_of_the_work_when_that_comes_first(fake_clock, capsys):
    fake_clock.step = 2.5  # 50 s for 20 items: 10% is 2 items (5 s), sooner than 10 s
    list(progress(fake_clock.work(20), "decode", total=20))
    lines = _lines(capsys.readouterr().err, "decode")
    assert [line.split(" (")[0] for line in lines[:3]] == ["decode: 2/20 batches", "decode: 4/20 batches",
                                                           "decode: 6/20 batches"]
    assert len(lines) == 10  # 2, 4, ..., 18, then the closing line (no separate line at 20/20)


def test_a_fast_step_prints_nothing(fake_clock, capsys):
    fake_clock.step = 0.01
    list(progress(fake_clock.work(50), "fast", total=50))
    assert capsys.readouterr().err == ""


def test_postfix_values_follow_the_line(fake_clock, capsys):
    fake_clock.step = 11.0
    bar = progress(fake_clock.work(2), "train epoch 1", total=2)
    for _ in bar:
        bar.set_postfix(loss_t="0.500")
    lines = _lines(capsys.readouterr().err, "train epoch 1")
    assert lines[0].endswith(", loss_t 0.500") and lines[-1].endswith("done in 22 s, loss_t 0.500")


def test_quiet_silences_lines_and_bars(fake_clock, capsys, monkeypatch):
    fake_clock.step = 30.0
    progress_module.set_quiet(True)
    try:
        list(progress(fake_clock.work(5), "quiet", total=5))
        monkeypatch.setattr(progress_module, "_interactive", lambda: True)
        bar = progress(range(5), "quiet")
        assert list(bar) == list(range(5)) and bar.bar is None
    finally:
        progress_module.set_quiet(False)
    assert capsys.readouterr().err == ""


@pytest.fixture
def heartbeat_clock(monkeypatch) -> "FakeClock":
    """Plain lines (no terminal), a fast heartbeat and a fake clock that the test moves."""
    monkeypatch.setattr(progress_module, "_interactive", lambda: False)
    monkeypatch.setattr(progress_module, "_quiet", False)
    monkeypatch.setattr(progress_module, "HEARTBEAT_S", 0.01)
    clock = FakeClock()
    monkeypatch.setattr(progress_module, "_clock", clock)
    monkeypatch.setattr(progress_module, "_last_line", 0.0)
    return clock


def test_the_heartbeat_reports_while_one_item_takes_long(heartbeat_clock, capsys):
    clock = heartbeat_clock

    def one_slow_item():
        clock.now = 25.0  # the item is 25 s into its work and still busy
        deadline, err = time.monotonic() + 5, ""
        while "slow: 0/1" not in err and time.monotonic() < deadline:
            time.sleep(0.01)  # wait (really) for the heartbeat's line
            err += capsys.readouterr().err
        yield err

    err = list(progress(one_slow_item(), "slow", total=1))[0]
    assert "slow: 0/1 batches (0%), 25 s" in err


def test_heartbeat_speaks_only_after_ten_silent_seconds(heartbeat_clock, capsys):
    clock = heartbeat_clock
    err = ""
    with progress_module.heartbeat("label propagation"):
        clock.now = 9.0
        time.sleep(0.2)
        assert capsys.readouterr().err == ""  # not yet 10 s
        clock.now = 12.0
        deadline = time.monotonic() + 5
        while "label propagation: working, 12 s" not in err and time.monotonic() < deadline:
            time.sleep(0.01)
            err += capsys.readouterr().err
    assert "label propagation: working, 12 s" in err


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    monkeypatch.setattr(progress_module, "_quiet", False)
    bar = progress(range(3), "tty")
    assert list(bar) == [0, 1, 2] and isinstance(bar.bar, tqdm)


def test_cli_quiet_flag(domain, tmp_path, fake_clock, capsys, monkeypatch):
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(progress_module, "_clock", lambda: next(seconds))  # every batch looks slow
    monkeypatch.setattr(progress_module, "_last_line", 0.0)
    seconds = itertools.count(0, 5.0)
    args = ["zeroshot", "--model", "tiny", "--dataset", str(domain), "--workers", "0"]
    assert main(args + ["--out", str(tmp_path / "a"), "--no-cache"]) == 0
    assert "features images:" in capsys.readouterr().err
    assert main(["--quiet"] + args + ["--out", str(tmp_path / "b"), "--no-cache"]) == 0
    captured = capsys.readouterr()
    progress_module.set_quiet(False)
    assert "features images:" not in captured.err and "zero-shot" in captured.out


def test_console_metrics_and_report_png_count_epochs_alike(domain, tmp_path, capsys, monkeypatch):
    from reclip.callbacks import PrintProgress
    from reclip.report.png import curves_figure

    monkeypatch.setattr(progress_module, "_quiet", False)
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    result = reclip.ReCLIP(model, epochs=2, workers=0, cache=False).fit(
        dataset, out=tmp_path / "run", callbacks=[PrintProgress()])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("after ")]
    m = result.metrics
    assert [h["epoch"] for h in m["epochs"]] == [0, 1]
    assert [line.split(":")[0] for line in lines] == ["after 0/2 epochs", "after 1/2 epochs", "after 2/2 epochs"]
    assert lines[:2] == [epoch_line(h, 2) for h in m["epochs"]] and lines[2] == final_line(m)
    # the last console line is the final evaluation of the adapted model, not the one before the last pass
    final_top1 = m.get("final_adapted", m["final"])["top1"]
    assert f"top1 {final_top1:.4f}" in lines[2]
    accuracy = curves_figure(m).axes[0]
    combined = next(line for line in accuracy.get_lines() if line.get_label().startswith("adapted model"))
    assert list(combined.get_xdata()) == [0, 1, 2]
    assert combined.get_ydata()[-1] == pytest.approx(100 * final_top1)
    assert accuracy.get_xlabel() == "epochs trained"
