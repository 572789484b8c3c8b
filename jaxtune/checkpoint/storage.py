"""Storage that fails for a while (a full disk, an object store that is down): the run stops in one line naming the
path and the cause, with exit status 75 (EX_TEMPFAIL: stopped early, state saved, run again to continue).

Orbax writes a step into a temporary folder and commits it last, so the previous complete step stays intact
whatever the failure; :func:`storage_boundary` turns the error, wherever in the chain of causes it sits (Orbax and
tensorstore wrap it), into a :class:`StorageUnavailableError`.

How long an object store may be down before that happens is the libraries' retry budget per request: gcsfs (run
files, Orbax's metadata) tries 6 times with backoffs of about 1, 2, 4, 8 and 16 s (about 35 s), tensorstore (Orbax's
arrays) retries 32 times from 1 s doubling to 32 s (about 15 minutes), google-cloud-storage (tensorboardX's event
files) retries for 120 s. ``checkpoint.store_retries`` = N sets gcsfs's tries and tensorstore's retries to N and
google-cloud-storage's time to 2**N s (:func:`bound_store_retries`): 3 ends a save within about 10 s of an outage,
8 rides out a few minutes.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, Callable, Iterator, Optional

from jaxtune.checkpoint.layout import complete_steps, train_checkpoint_dir
from jaxtune.errors import EXIT_RESUMABLE, JaxtuneError
from jaxtune.paths import PathLike

EX_TEMPFAIL = EXIT_RESUMABLE
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}
_TEXTS = (
    ("No space left on device", "no space left on device"),
    ("Disk quota exceeded", "disk quota exceeded"),
    ("RESOURCE_EXHAUSTED", "storage exhausted"),
    ("503", "the object store answered 503 (unavailable)"),
    ("Service Unavailable", "the object store is unavailable"),
)


class StorageUnavailableError(JaxtuneError):
    """Writing failed for a reason that may pass (space, an outage); the CLI exits with :data:`EX_TEMPFAIL`."""

    exit_code = EX_TEMPFAIL


def storage_cause(error: BaseException) -> Optional[str]:
    """A short cause when ``error`` (or anything in its chain of causes) is a full disk or an unavailable store."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return _FULL[error.errno]
        if type(error).__name__ == "RetryError" and isinstance(getattr(error, "cause", None), BaseException):
            error = error.cause  # google-api-core's "retries ran out" holds the last failure here, not in __cause__
            continue
        if type(error).__name__ in ("ServiceUnavailable", "TooManyRequests", "RetryError"):
            return f"the object store is unavailable ({type(error).__name__})"
        text = str(error)
        for needle, cause in _TEXTS:
            if needle in text and (needle != "503" or "HttpError" in type(error).__name__ + text):
                return cause
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def storage_boundary(where: str, intact: Callable[[], str]) -> Iterator[None]:
    """Turn a full disk or an unavailable store met inside the block into one StorageUnavailableError naming
    ``where``, the cause, and what ``intact()`` says is still whole."""
    try:
        yield
    except JaxtuneError:
        raise
    except Exception as e:  # noqa: BLE001 -- Orbax, tensorstore and gcsfs raise many types for the same causes
        cause = storage_cause(e)
        if cause is None:
            raise
        raise StorageUnavailableError(
            f"{where}: cannot write: {cause}; {intact()}. Free space (or wait for the store), then run the same "
            f"command again to continue"
        ) from e


def intact_steps(run_dir: PathLike) -> str:
    """A sentence naming the run's newest complete train checkpoint (what a failed write leaves whole)."""
    directory = train_checkpoint_dir(run_dir)
    try:
        steps = complete_steps(directory)
    except Exception:  # noqa: BLE001 -- the store that failed the write may not answer a listing either
        return f"the complete steps in {directory} are intact (not listed: the store does not answer)"
    if not steps:
        return f"no step of this run was complete yet in {directory}"
    return f"the newest complete step, {directory / str(steps[-1])}, is intact"


_GCSFS_RETRIED = ("_request", "_get_file_request", "_get_file_concurrent")
"""The methods of gcsfs.GCSFileSystem that gcsfs wraps in its retry loop (``gcsfs.retry.retry_request``)."""
_unbounded: dict[str, Any] = {}


def bound_store_retries(tries: Optional[int]) -> None:
    """Make every object-store request of this process give up after ``tries`` tries (None: the libraries' own
    budgets, see the module docstring): gcsfs's retry loop is rebuilt with that count, tensorstore's GCS context
    (which Orbax copies for each save and restore) gets ``gcs_request_retries.max_retries``, and
    google-cloud-storage's default retry (every call that names none) stops after ``2**tries`` seconds."""
    try:
        from gcsfs import core as gcsfs_core
        from gcsfs.retry import retry_request
    except ImportError:  # no object store support installed: nothing to bound
        return
    from google.cloud.storage.retry import DEFAULT_RETRY
    from orbax.checkpoint._src.serialization import tensorstore_utils

    # The library's calls take this very object as their default argument: only changing it in place reaches them.
    library_timeout = _unbounded.setdefault("google-cloud-storage", (DEFAULT_RETRY._timeout, DEFAULT_RETRY._deadline))
    DEFAULT_RETRY._timeout, DEFAULT_RETRY._deadline = library_timeout if tries is None else (2.0**tries,) * 2

    for name in _GCSFS_RETRIED:
        library = _unbounded.setdefault(name, getattr(gcsfs_core.GCSFileSystem, name))  # as gcsfs decorated it
        bounded = library if tries is None else retry_request(retries=tries)(library.__wrapped__)
        setattr(gcsfs_core.GCSFileSystem, name, bounded)
    for context in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
        if tries is None:
            context.pop("gcs_request_retries", None)
        else:
            context["gcs_request_retries"] = {"max_retries": tries, "initial_delay": "1s", "max_delay": "32s"}
