"""Where the libraries' own log records go while a jaxtune command runs: into a file, not onto the terminal.

Orbax and tensorstore log through absl (the Python logger ``absl``): on a damaged checkpoint, a full disk or an
unreachable store, their background threads log one to fifty tracebacks before jaxtune's one-line error, burying
it. :func:`route_library_logs` sends the ``absl`` and ``asyncio`` loggers' records to ``$TMPDIR/jaxtune-logs/COMMAND.PID.log``
(created only once something is logged) and stops them reaching stderr; keep that file for debugging.

Not routed (yet): after a failed asynchronous save, tensorstore's callbacks print ``RuntimeError: Event loop is
closed`` tracebacks straight to stderr (not through logging, sys.excepthook or threading.excepthook).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

LIBRARY_LOGGERS = ("absl", "asyncio")
"""absl: Orbax and tensorstore; asyncio: "Future exception was never retrieved" for the futures of a failed
asynchronous save (timing-dependent, with the whole tensorstore error)."""
_handler: Optional[logging.Handler] = None


def library_log_path(command: str) -> str:
    """The file a command's library log records go to."""
    return os.path.join(tempfile.gettempdir(), "jaxtune-logs", f"{command}.{os.getpid()}.log")


class _LazyFileHandler(logging.FileHandler):
    def _open(self):  # the folder is made with the file, on the first record
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()


def route_library_logs(command: str) -> str:
    """Send the libraries' log records to :func:`library_log_path` (once per process); returns that path."""
    global _handler
    if _handler is None:
        _handler = _LazyFileHandler(library_log_path(command), delay=True, encoding="utf-8")
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s"))
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(_handler)
            logger.propagate = False
    return _handler.baseFilename
