"""The one base class of errors that jaxtune reports to a user as a message rather than a traceback, and the exit
statuses of the long-running commands (``train``, ``sweep``), which supervisors (``gcp/tpu.sh supervise``, the Ray
sweep) read to decide whether to restart:

====  =======================================================================================================
0     the work is complete (``RUN_DIR/completed.json`` exists)
1     a failure (a traceback): retried from a small budget
2     bad input (a config, a data file, a checkpoint): not retried, the message names what to fix
75    EX_TEMPFAIL: stopped early with its state saved (SIGTERM/preemption, storage full or unreachable): run again
====  =======================================================================================================
"""

from __future__ import annotations


class JaxtuneError(Exception):
    """Bad input (a config key, a data record, a checkpoint, a layout): the message names where and what was
    expected. The CLI prints it on one line and exits with status 2."""


EXIT_OK = 0
"""The work is complete."""
EXIT_FAILURE = 1
"""A failure (an unexpected exception): worth a retry or two."""
EXIT_BAD_INPUT = 2
"""Bad input: rerunning the same command cannot help."""
EXIT_RESUMABLE = 75
"""EX_TEMPFAIL (sysexits.h): stopped early, state saved, run the same command again to continue."""
