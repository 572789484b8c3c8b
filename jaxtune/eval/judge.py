"""An LLM judge over any OpenAI-compatible ``/v1/chat/completions`` endpoint, with retries and an on-disk cache.

- One user message per request, temperature 0 by default; the API key is read from the environment variable named
  in :class:`JudgeSettings` and sent as a Bearer token. It is never logged, cached, returned or put in an error
  message: wherever a server echoes it back (a reply, an error body, a malformed body) it is replaced by ``***``
  before anything else sees the text, and cache entries written before are masked when read.
- Transport failures (HTTP 408, 429 and 5xx, timeouts, dropped connections, malformed bodies) are retried with
  exponential backoff, honouring ``Retry-After``, with a warning line per retry naming the item, the attempt and the
  cause; other HTTP errors fail at once. When the retries run out the judge gives up on that message
  (:class:`JudgeGaveUp`): :meth:`Judge.judge_all` records it on the message's judgements and goes on with the
  others, until it gave up on :data:`GIVE_UP_IN_A_ROW` requests in a row with no answer between them (the judge is
  down: the messages not asked yet are given up on without a request).
- Scores are parsed from ``得分:`` (either colon width, optional trailing ``分`` or ``/1``); a reply without one, with
  several disagreeing ones, or off the [0, 1] scale (``得分：4分``) is a parse failure: the judge is re-asked a bounded
  number of times, never clamped, and a judgement that stays unparseable is recorded as a failure.
- Every final judgement (failures included) is appended to a JSON Lines cache keyed by the judge's identity, the
  message and the repeat number, so a rerun after a crash asks nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from jaxtune.errors import EXIT_RESUMABLE, JaxtuneError
from jaxtune.paths import append_text, as_path, is_remote, write_text_atomic

log = logging.getLogger(__name__)

_SCORE = re.compile(r"得分\s*[:：]\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?")


class JudgeError(JaxtuneError, RuntimeError):
    """The judge endpoint failed for good (a non-retryable HTTP error, or retries exhausted)."""


class JudgeGaveUp(JudgeError):
    """The judge did not answer one message after every retry (timeouts, 5xx, dropped connections): retrying later
    can succeed, so a command that stops on it exits 75 (:data:`jaxtune.errors.EXIT_RESUMABLE`)."""

    exit_code = EXIT_RESUMABLE


GIVE_UP_IN_A_ROW = 8
"""Judgements given up on in a row (no answer from the judge between them) after which :meth:`Judge.judge_all`
asks nothing more and gives up on the rest at once."""


class JudgeCacheError(JaxtuneError, ValueError):
    """A judge cache file holds a line that is not a cache entry; the message names the file and the line."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how to ask it."""

    base_url: str
    """API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``; requests go to
    ``{base_url}/chat/completions``."""
    model: str
    api_key_env: str = "JUDGE_API_KEY"
    """Environment variable holding the API key (unset: no Authorization header)."""
    temperature: float = 0.0
    max_tokens: int | None = 3000
    """``max_tokens`` of each request (the BELLE page used 3000); None leaves it out."""
    repeats: int = 3
    """Judgements per answer; the answer's score is their mean."""
    parse_retries: int = 2
    """Re-asks after an unparseable or off-scale reply, per judgement."""
    timeout_s: float = 60.0
    """Socket timeout of one request."""
    max_retries: int = 5
    """Retries of one request after transport failures."""
    backoff_s: float = 1.0
    """First backoff; doubled after each failure (with up to 10% jitter)."""
    max_backoff_s: float = 60.0
    concurrency: int = 4
    """Requests in flight at once."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("judge model must be named")
        for name in ("repeats", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"judge {name} must be at least 1, got {getattr(self, name)}")
        for name in ("parse_retries", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"judge {name} must be >= 0, got {getattr(self, name)}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def identity(self) -> dict[str, Any]:
        """What results record about the judge (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "repeats": self.repeats,
            "parse_retries": self.parse_retries,
        }


def parse_judge_score(reply: str) -> tuple[float | None, str | None]:
    """``(score, None)`` for a reply with one score in [0, 1] after ``得分:``, else ``(None, why)``."""
    values = []
    for m in _SCORE.finditer(unicodedata.normalize("NFKC", reply)):
        if m.group(2) is not None and float(m.group(2)) != 1.0:
            return None, f"score written out of {m.group(2)}"
        values.append(float(m.group(1)))
    if not values:
        return None, "no number after 得分:"
    if len(set(values)) > 1:
        return None, f"several different scores {values}"
    value = values[0]
    if not 0.0 <= value <= 1.0:
        return None, f"score {value:g} is off the 0-1 scale"
    return value, None


@dataclass(frozen=True)
class Judgement:
    """The final outcome of one (message, repeat): a score, or a parse failure after every re-ask."""

    key: str
    repeat: int
    score: float | None
    replies: tuple[str, ...]
    """Every reply received, re-asks included (the last one decided)."""
    problem: str | None
    cached: bool = False
    gave_up: str | None = None
    """Why the judge gave up on this judgement (no answer after every retry; never cached: a rerun asks again)."""

    @property
    def failed(self) -> bool:
        return self.score is None


JUDGE_CACHE_FILE = "judge_cache.jsonl"
"""File name of an evaluation's judge cache in its output folder."""


class JudgeCache:
    """Append-only JSON Lines store of judgements; safe for concurrent writers in one process."""

    def __init__(self, path: str | Path):
        self.path = as_path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        complete, _, tail = text.rpartition("\n")
        if tail.strip():
            # A crash mid-write leaves an unterminated last line: drop it (that judgement is asked again) so that
            # later entries start on a line of their own.
            log.warning("%s: dropping an unterminated last cache line", self.path)
            write_text_atomic(self.path, complete + "\n" if complete else "")
        for lineno, line in enumerate(complete.split("\n"), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or "key" not in entry:
                    raise ValueError("no 'key'")
            except ValueError as e:
                raise JudgeCacheError(
                    f"{self.path}:{lineno}: corrupt judge cache line ({e}); delete the line (its "
                    f"judgement is asked again) or the file"
                ) from None
            self._entries[entry["key"]] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if is_remote(self.path):
                append_text(self.path, line)  # an object store has no append: the object is rewritten whole
            else:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            self._entries[entry["key"]] = entry


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Judge:
    """Asks the judge, with retries, re-asks on unparseable replies, a cache and bounded concurrency."""

    def __init__(self, settings: JudgeSettings, cache: JudgeCache | str | Path | None = None):
        self.settings = settings
        self.cache = cache if isinstance(cache, JudgeCache) or cache is None else JudgeCache(cache)
        self._api_key = os.environ.get(settings.api_key_env) or None
        if self._api_key is None:
            log.warning(
                "environment variable %s is not set: calling the judge without an API key", settings.api_key_env
            )
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    # -- transport --------------------------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        """``text`` with the API key replaced (run on whatever the server sent, before it is cut or stored)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _post_once(self, content: str) -> str:
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": s.temperature,
        }
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(s.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        with self._count_lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = self._mask(e.read().decode("utf-8", "replace"))[:300]
            if e.code in (408, 429) or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {detail}", _retry_after_seconds(e.headers.get("Retry-After")))
            raise JudgeError(f"judge {s.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Retryable(f"{type(e).__name__}: {self._mask(str(e))}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(
                self._mask(f"malformed response body ({type(e).__name__}: {e}): {raw.decode('utf-8', 'replace')}")[:300]
            ) from None
        return self._mask(text)

    def complete(self, content: str, label: str = "a message") -> str:
        """The judge's reply text to one user message (``label`` names it in the log), retrying transport failures;
        :class:`JudgeGaveUp` once the retries run out."""
        s = self.settings
        delay = s.backoff_s
        for attempt in range(s.max_retries + 1):
            try:
                return self._post_once(content)
            except _Retryable as e:
                if attempt == s.max_retries:
                    raise JudgeGaveUp(f"judge {s.url} failed {attempt + 1} times; last error: {e}") from None
                wait = min(s.max_backoff_s, e.retry_after if e.retry_after is not None else delay)
                log.warning(  # a line per retry: a judge that never answers is not silent for minutes
                    "judge request for %s, attempt %d failed (%s); retry %d of %d in %.2fs",
                    label,
                    attempt + 1,
                    e,
                    attempt + 1,
                    s.max_retries,
                    wait,
                )
                time.sleep(wait * (1.0 + 0.1 * random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    # -- judgements -------------------------------------------------------------------------------------------------

    def cache_key(self, content: str, repeat: int) -> str:
        s = self.settings
        ident = {"base_url": s.base_url, "model": s.model, "temperature": s.temperature, "max_tokens": s.max_tokens}
        blob = json.dumps({"judge": ident, "content": content, "repeat": repeat}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, content: str, repeat: int, label: str = "a message") -> Judgement:
        """One judgement of ``content`` (repeat number ``repeat``; ``label`` names it in the log), from the cache when
        it holds it."""
        key = self.cache_key(content, repeat)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return Judgement(
                    key,
                    repeat,
                    hit["score"],
                    tuple(self._mask(r) for r in hit["replies"]),
                    hit.get("problem"),
                    cached=True,
                )
        replies: list[str] = []
        score, problem = None, None
        for _ in range(self.settings.parse_retries + 1):
            reply = self.complete(content, f"{label} (judgement {repeat + 1})")
            replies.append(reply)
            score, problem = parse_judge_score(reply)
            if score is not None:
                break
            log.info("unparseable judge reply (%s); asking again", problem)
        result = Judgement(key, repeat, score, tuple(replies), problem)
        if self.cache is not None:
            self.cache.put(
                {
                    "key": key,
                    "repeat": repeat,
                    "score": score,
                    "replies": replies,
                    "problem": problem,
                    "model": self.settings.model,
                }
            )
        return result

    def judge_all(self, contents: Sequence[str], labels: Sequence[str] | None = None) -> list[list[Judgement]]:
        """``settings.repeats`` judgements of every message, ``settings.concurrency`` requests at a time; one list per
        message (``labels`` name the messages in the log). A judgement the judge gave up on (:class:`JudgeGaveUp`)
        comes back with ``gave_up`` set and the others go on (see the module docstring); any other hard failure
        cancels what has not started and is raised (finished ones stay cached)."""
        names = list(labels) if labels is not None else [f"message {i + 1}" for i in range(len(contents))]
        jobs = [(i, r) for i in range(len(contents)) for r in range(self.settings.repeats)]
        out: list[list[Judgement | None]] = [[None] * self.settings.repeats for _ in contents]
        in_a_row = [0]  # judgements given up on since the judge last answered
        lock = threading.Lock()

        def one(i: int, r: int) -> Judgement:
            key = self.cache_key(contents[i], r)
            with lock:
                down = in_a_row[0] >= GIVE_UP_IN_A_ROW
            if down and (self.cache is None or self.cache.get(key) is None):
                why = f"not asked: the judge gave up on the {in_a_row[0]} requests before it in a row"
                return Judgement(key, r, None, (), why, gave_up=why)
            try:
                result = self.judge(contents[i], r, names[i])
            except JudgeGaveUp as e:
                with lock:
                    in_a_row[0] += 1
                log.warning("judge gave up on %s (judgement %d): %s", names[i], r + 1, e)
                return Judgement(key, r, None, (), str(e), gave_up=str(e))
            if not result.cached:
                with lock:
                    in_a_row[0] = 0
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures = {pool.submit(one, i, r): (i, r) for i, r in jobs}
            done, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            for f, (i, r) in futures.items():
                out[i][r] = f.result()
        return [[j for j in row if j is not None] for row in out]
