"""What the libraries print on a failed save goes into the command's log file, not before jaxtune's one line
(jaxtune/commands/library_logs.py). The full-disk runs themselves are in tests/checkpoint/test_storage.py; here the
"Event loop is closed" traceback of a tensorstore callback, which they produce only now and then, on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_an_exception_in_a_tensorstore_callback_goes_to_the_log_file(tmp_path):
    # Before: a bare "Traceback ... RuntimeError: Event loop is closed" on stderr (sys.unraisablehook's default).
    code = textwrap.dedent(
        """
        import threading
        import tensorstore as ts
        from jaxtune.commands.library_logs import route_library_logs

        print(route_library_logs("train"))
        promise, future = ts.Promise.new()

        def call_soon_threadsafe(f):  # what asyncio does for a callback into a loop already closed
            raise RuntimeError("Event loop is closed")

        future.add_done_callback(call_soon_threadsafe)
        setter = threading.Thread(target=lambda: promise.set_result(1))
        setter.start()
        setter.join()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    log = Path(proc.stdout.strip()).read_text(encoding="utf-8")
    assert "ERROR asyncio" in log and "RuntimeError: Event loop is closed" in log
    assert "in call_soon_threadsafe" in log  # the traceback, for debugging
