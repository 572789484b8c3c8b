"""Where the libraries' own log records go while a jaxtune command runs: into a file, not onto the terminal.

Orbax and tensorstore log through absl (the Python logger ``absl``): on a damaged checkpoint, a full disk or an
unreachable store, their background threads log one to fifty tracebacks before jaxtune's one-line error, burying
it. :func:`route_library_logs` sends the records of :data:`LIBRARY_LOGGERS` to ``$TMPDIR/jaxtune-logs/COMMAND.PID.log``
(created only once something is logged) and stops them reaching stderr; keep that file for debugging.

After a failed save, tensorstore's callbacks into a closed asyncio loop raise ``RuntimeError: Event loop is
closed`` where nothing can catch it: Python reports such an exception through ``sys.unraisablehook`` (a bare
traceback on stderr, not through logging, sys.excepthook or threading.excepthook). :func:`route_library_logs`
installs a hook that writes them into the same file instead, and one for exceptions that end a library's thread
(tensorboardX's writer thread when its event file cannot be flushed to a store that is down); an exception in a
thread running jaxtune's code still reaches stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import traceback
from typing import Optional

LIBRARY_LOGGERS = ("absl", "asyncio", "gcsfs")
"""absl: Orbax and tensorstore; asyncio: "Future exception was never retrieved" for the futures of a failed
asynchronous save (timing-dependent, with the whole tensorstore error); gcsfs: "_request out of retries" with its
traceback when an object store stays unavailable."""
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
        sys.unraisablehook = _unraisable_to_log
        threading.excepthook = _library_thread_to_log
    return _handler.baseFilename


def _unraisable_to_log(unraisable) -> None:
    """``sys.unraisablehook``: the exception (and what raised it, when known) as a record of the library log."""
    where = f" in {unraisable.object!r}" if unraisable.object is not None else ""
    text = "".join(
        traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    ).rstrip()
    logging.getLogger("asyncio").error("%s%s:\n%s", unraisable.err_msg or "Exception ignored", where, text)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_default_thread_hook = threading.excepthook


def _library_thread_to_log(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: an exception that ends a thread in library code only goes to the library log."""
    frames = traceback.extract_tb(args.exc_traceback)
    if any(os.path.abspath(frame.filename).startswith(_PACKAGE + os.sep) for frame in frames):
        _default_thread_hook(args)
        return
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)).rstrip()
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("asyncio").error("exception in thread %s:\n%s", name, text)
