"""The one base class of errors that jaxtune reports to a user as a message rather than a traceback."""

from __future__ import annotations


class JaxtuneError(Exception):
    """Bad input (a config key, a data record, a checkpoint, a layout): the message names where and what was
    expected. The CLI prints it on one line and exits with status 2."""
