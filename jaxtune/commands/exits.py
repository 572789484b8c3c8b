"""A sub-command's outcome as its exit status (the table of :mod:`jaxtune.errors`): what the command returns;
2 for bad input (:class:`jaxtune.errors.JaxtuneError`, a missing file), or the error's own ``exit_code`` (75 for a
run stopped early with its state saved); 1 for anything unexpected, in one line on stderr with the traceback in
the command's log file (:func:`jaxtune.commands.library_logs.library_log_path`)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from jaxtune.commands.library_logs import library_log_path
from jaxtune.errors import EXIT_BAD_INPUT, EXIT_FAILURE, JaxtuneError


def run_with_exit_status(args: argparse.Namespace) -> int:
    """Run the parsed sub-command (``args.fn``) and return its exit status."""
    try:
        return args.fn(args)
    except (JaxtuneError, FileNotFoundError) as e:
        print(f"jaxtune {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_BAD_INPUT)  # 75 (EX_TEMPFAIL): stopped early, state saved, run again
    except Exception as e:  # a failure: supervisors retry it a few times; the traceback goes to the log
        log_path = library_log_path(args.command)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"jaxtune {args.command} failed:\n{traceback.format_exc()}")
        print(f"jaxtune {args.command}: failed: {type(e).__name__}: {e} (traceback in {log_path})", file=sys.stderr)
        return EXIT_FAILURE
