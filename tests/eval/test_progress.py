"""Progress lines of an evaluation suite: rates and ETA from a controlled clock."""

from __future__ import annotations

import io

from jaxtune.eval.progress import SuiteProgress, duration


def test_duration_formats():
    assert [duration(s) for s in (0, 12.4, 293, 3725)] == ["0s", "12s", "4m53s", "1h02m"]


def test_rates_eta_and_throttling():
    now = [100.0]
    tokens = [500]
    out = io.StringIO()
    meter = SuiteProgress("doit", tokens=lambda: tokens[0], every_s=10, stream=out, clock=lambda: now[0])
    now[0], tokens[0] = 110.0, 2500
    meter.update(20, 100)  # 2 items/s, 200 tokens/s, 80 items left
    now[0] = 112.0
    meter.update(24, 100)  # within every_s of the last line: not printed
    now[0], tokens[0] = 150.0, 8500
    meter.update(100, 100)  # the last one always prints
    meter.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "doit: 20/100 items (20%), 2.0 items/s, 200 generated tokens/s, ETA 40s",
        "doit: 100/100 items (100%), 2.0 items/s, 160 generated tokens/s, ETA 0s",
        "doit: 100 items in 50s, 2.0 items/s, 160 generated tokens/s",
    ]
