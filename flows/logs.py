"""Rate-limit progress bars in a stage's streamed log.

``flows/pipeline.py:stream`` logs every output line of a stage. A tqdm bar redraws up to ten
times a second and, read through a text pipe, every redraw arrives as its own line (universal
newlines turn its ``\\r`` into a line end), so one evaluation stage would send thousands of
near-identical records to the Prefect API. ``ProgressThrottle`` keeps a bar's first line, then at
most one line every ``every_s`` seconds per bar, and its final 100% line once (tqdm redraws 100%
when it closes); every other line passes. ``pending()`` returns the last unlogged line of bars
that never finished, so a stage that dies mid-bar still shows how far it got.
"""
from __future__ import annotations

import re
import time
from typing import Callable

PROGRESS = re.compile(r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|.*?\|\s*[\d.]+[kMG]?/(?P<total>[\d.]+[kMG]?|\?)")
"""A tqdm-style bar: ``desc: 45%|████▌     | 45/100 [00:10<00:12, 4.5it/s]``."""


class ProgressThrottle:
    """Decides which successive output lines to log; one instance per stream.

    A bar is identified by its description and total (``evaluate: 3%|…| 3/100`` and
    ``evaluate: 3%|…| 3/40`` are two bars). After its 100% line the bar is forgotten, so a later
    bar with the same description (the next model's batches) starts afresh.
    """

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if every_s < 0:
            raise ValueError(f"every_s={every_s}: give 0 (log every redraw) or a positive number of seconds.")
        self.every_s = every_s
        self._clock = clock
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: dict[tuple[str, str], str] = {}
        self._finished: dict[tuple[str, str], float] = {}

    def keep(self, line: str) -> bool:
        """True when ``line`` should be logged."""
        m = PROGRESS.match(line)
        if m is None:
            return True
        key, now = (m.group("desc"), m.group("total")), self._clock()
        if int(m.group("pct")) >= 100:
            self._last_logged.pop(key, None)
            self._unlogged.pop(key, None)
            repeat = now - self._finished.get(key, float("-inf")) < self.every_s
            self._finished[key] = now
            return not repeat
        self._finished.pop(key, None)  # below 100%: a new bar, even if one of the same name just ended
        last = self._last_logged.get(key)
        if last is not None and now - last < self.every_s:
            self._unlogged[key] = line
            return False
        self._last_logged[key] = now
        self._unlogged.pop(key, None)
        return True

    def pending(self) -> list[str]:
        """The last unlogged line of each bar that has not reached 100% (log them when the stream ends)."""
        lines = list(self._unlogged.values())
        self._unlogged.clear()
        return lines
