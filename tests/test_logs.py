"""Progress bars in a stage's log: throttled per bar, final line always kept, other lines untouched."""
from __future__ import annotations

import subprocess
import sys

import pytest

from flows.logs import ProgressThrottle


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bar(pct: int, total: int = 100, desc: str = "generating") -> str:
    done = pct * total // 100
    return f"{desc}: {pct:3d}%|{'█' * (pct // 10):<10}| {done}/{total} [00:{pct:02d}<00:10, 4.50it/s]"


def test_a_bar_is_logged_at_most_every_n_seconds_plus_its_final_line():
    clock = Clock()
    throttle = ProgressThrottle(every_s=10, clock=clock)
    kept = []
    for second in range(35):  # one redraw a second, 0% … 100%
        clock.now = float(second)
        line = bar(min(100, second * 3))
        if throttle.keep(line):
            kept.append(line)
    assert not throttle.keep(bar(100))  # tqdm redraws 100% when it closes: logged once
    # first redraw, then one every 10 s, then the 100% line (at 34 s, less than 10 s after the last)
    assert [k.split("%")[0].split()[-1] for k in kept] == ["0", "30", "60", "90", "100"]
    assert throttle.pending() == []


def test_other_lines_always_pass_between_redraws():
    clock = Clock()
    throttle = ProgressThrottle(every_s=10, clock=clock)
    assert throttle.keep(bar(10))
    clock.now = 1.0
    assert not throttle.keep(bar(20))
    for line in ["Running stage 'evaluate':", "| base | 76% | 16% |", "50% of prompts done", "ERROR: exited with 2"]:
        assert throttle.keep(line), line


def test_bars_are_told_apart_by_description_and_total():
    clock = Clock()
    throttle = ProgressThrottle(every_s=10, clock=clock)
    assert throttle.keep(bar(5, desc="base"))
    assert throttle.keep(bar(5, desc="craft"))  # another bar: its first line passes
    assert throttle.keep(bar(5, total=40, desc="base"))  # same description, other total
    clock.now = 2.0
    assert not throttle.keep(bar(9, desc="base"))


def test_a_finished_bar_is_forgotten_and_unfinished_ones_are_pending():
    clock = Clock()
    throttle = ProgressThrottle(every_s=10, clock=clock)
    assert throttle.keep(bar(0))
    assert throttle.keep(bar(100))
    clock.now = 1.0
    assert throttle.keep(bar(0))  # the next model's bar with the same description starts afresh
    clock.now = 2.0
    assert not throttle.keep(bar(40))
    assert not throttle.keep(bar(50))
    assert throttle.pending() == [bar(50)]  # a stage that died mid-bar: its last state
    assert throttle.pending() == []


def test_zero_logs_every_redraw_and_negative_is_refused():
    throttle = ProgressThrottle(every_s=0, clock=Clock())
    assert all(throttle.keep(bar(p)) for p in range(0, 101, 5))
    with pytest.raises(ValueError, match="positive"):
        ProgressThrottle(every_s=-1)


def test_real_tqdm_through_a_text_pipe():
    """What stream() reads: tqdm's \\r redraws arrive as separate lines (universal newlines)."""
    code = ("import time\nfrom tqdm import tqdm\nfor _ in tqdm(range(20), desc='generating', mininterval=0):\n"
            "    time.sleep(0.005)\nprint('done')")
    throttle, lines = ProgressThrottle(every_s=60), []
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip().split("\r")[-1]
            if line:
                lines.append(line)
    kept = [line for line in lines if throttle.keep(line)]
    assert len(lines) > 20  # one line per redraw
    assert [k.split("|")[0] for k in kept] == ["generating:   0%", "generating: 100%", "done"]
