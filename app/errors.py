"""The scraper's own exception tree. Foreign errors (the Kubernetes client's, requests')
are wrapped with ``raise ... from e`` so callers catch these and nothing wider, and
foreign bodies are truncated before they reach a log line."""

from __future__ import annotations

import math
import time

MAX_BODY = 200


def truncate(text: str | bytes | None, limit: int = MAX_BODY) -> str:
    """A foreign error body, shortened for a log line, control characters removed."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


class ScraperError(Exception):
    """Base of everything this service raises on purpose."""


class LedgerLost(ScraperError):
    """The Redis ledger has no initialisation record: it lost its data, or was never set up."""


class FetchTimeLimitExceeded(ScraperError):
    """A read went past its deadline (``FETCH_TIME_LIMIT`` from the task's start),
    checked while waiting for the answer and between chunks: the fetch stops, commits
    nothing, and the next round retries. The thread pool enforces no Celery time limit,
    so a fetch worker on threads relies on this; on prefork the soft limit may come first
    (the same outcome)."""


def time_left(deadline: float | None, what: str, cause: BaseException | None = None) -> float:
    """Seconds left before ``deadline`` (``time.monotonic()`` s; ``None``: no deadline,
    infinitely many). ``FetchTimeLimitExceeded`` (from ``cause``: a timeout that the
    time left cut short) when none are."""
    if deadline is None:
        return math.inf
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeLimitExceeded(f"{what}: over its time limit") from cause
    return left


# Kubernetes -------------------------------------------------------------------


class KubeError(ScraperError):
    """A Kubernetes API call failed."""


class KubeUnavailable(KubeError):
    """5xx, timeout or connection failure: worth trying again next round."""


class KubeForbidden(KubeError):
    """401/403: the ServiceAccount lacks a permission. Retrying will not help."""


class PodGone(KubeError):
    """404: the pod no longer exists."""


class NoPreviousLog(KubeError):
    """``previous=true`` answered 400: the previous container's log is gone."""


class WatchExpired(KubeError):
    """410 Gone on a watch (an ``ERROR`` event or the answer's status): the resourceVersion
    is older than the apiserver's history. List again and watch from the list's version."""


# Platform ---------------------------------------------------------------------


class PlatformError(ScraperError):
    """A report could not be delivered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PlatformRetryable(PlatformError):
    """Connection error, timeout, 409, 429 or 5xx: may succeed next time."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class PlatformRejected(PlatformError):
    """3xx or 4xx: will not succeed by retrying; goes to the dead-letter store."""
