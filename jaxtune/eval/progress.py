"""Throughput and ETA of an evaluation suite, printed while it runs.

A suite reports ``(items done, items in all)`` through its ``on_progress`` callback; the language model counts the
tokens it generated (:attr:`jaxtune.eval.language_model.JaxLanguageModel.generated_tokens`). Lines go to stderr, at
most one every ``every_s`` seconds plus a summary at the end::

    doit: 192/1100 items (17%), 3.1 items/s, 412 generated tokens/s, ETA 4m53s
    doit: 1100 items in 5m51s, 3.1 items/s, 405 generated tokens/s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Optional, TextIO


def duration(seconds: float) -> str:
    """``1h02m``, ``4m53s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class SuiteProgress:
    """Items/s, generated tokens/s and the ETA of one suite; pass :meth:`update` as the suite's ``on_progress``."""

    def __init__(
        self,
        suite: str,
        tokens: Optional[Callable[[], int]] = None,
        *,
        every_s: float = 10.0,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """suite: the name printed. tokens: the number of tokens generated so far (read at the start and at each
        line; None when nothing is generated). every_s: least seconds between two lines. clock: seconds."""
        self.suite = suite
        self._tokens = tokens
        self._every_s = every_s
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._tokens_start = tokens() if tokens is not None else 0
        self._last_line: Optional[float] = None
        self.done = 0
        self.total = 0

    def _rates(self) -> tuple[float, float, float]:
        elapsed = max(self._clock() - self._start, 1e-9)
        generated = (self._tokens() - self._tokens_start) if self._tokens is not None else 0
        return elapsed, self.done / elapsed, generated / elapsed

    def _print(self, line: str) -> None:
        print(line, file=self._stream if self._stream is not None else sys.stderr, flush=True)

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` items finished; prints a line when ``every_s`` passed since the last one."""
        self.done, self.total = done, total
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self._every_s and done < total:
            return
        self._last_line = now
        elapsed, items_s, tokens_s = self._rates()
        eta = (total - done) / items_s if items_s > 0 else float("inf")
        share = 100 * done / total if total else 100.0
        eta_text = duration(eta) if eta != float("inf") else "unknown"
        self._print(
            f"{self.suite}: {done}/{total} items ({share:.0f}%), {items_s:.1f} items/s, "
            f"{tokens_s:.0f} generated tokens/s, ETA {eta_text}"
        )

    def finish(self) -> None:
        """The summary line of the whole suite."""
        elapsed, items_s, tokens_s = self._rates()
        self._print(
            f"{self.suite}: {self.done} items in {duration(elapsed)}, {items_s:.1f} items/s, "
            f"{tokens_s:.0f} generated tokens/s"
        )
