"""The platform API client: one POST per report, with the contract of the original.

``POST {PLATFORM_API_URL}/api/v1/activity-logs/tunnel-traffic`` with headers
``x-internal-secret`` and ``Idempotency-Key``. Redirects are never followed: one would
carry the secret to another host. TLS is verified. Answers are sorted into delivered
(2xx), retryable (connection errors, timeouts, 408, 409, 425, 429, 5xx) and rejected
(3xx, other 4xx), the last two raised as this package's exceptions.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3

from app.errors import PlatformRejected, PlatformRetryable, truncate
from app.model import ReportOutcome

PATH = "/api/v1/activity-logs/tunnel-traffic"
RETRYABLE = {408, 409, 425, 429}
CHUNK = 16384  # bytes read from an answer at a time, the deadline checked between reads


@dataclass(frozen=True)
class Delivery:
    outcome: ReportOutcome  # DELIVERED or SKIPPED
    status: int
    user_id: str
    note: str  # why a 2xx looked odd, else ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class PlatformClient:
    """One per worker process, shared by its threads: a urllib3 pool of kept-alive
    connections (thread-safe; up to ``pool_size`` kept, one per thread that sends at
    once). urllib3 rather than a ``requests.Session`` per thread: requests costs about
    0.6 ms of CPU more a POST (settings merged, hooks, proxies and ~/.netrc looked up
    every time), a sixth of a report's cost.

    The environment is read once: ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` (as
    requests would), ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` for the CA bundle,
    else certifi's (requests' own). Never a .netrc: the secret is the only credential.

    One POST is bounded as a whole: ``connect_timeout + read_timeout`` from its start
    (``deadline``). urllib3's timeouts apply to each socket operation, so a platform that
    answers a byte at a time could otherwise hold an attempt, and its send lock, for
    ever; the threads pool enforces no task time limit to stop it either."""

    def __init__(self, base_url: str, secret: str, connect_timeout: float, read_timeout: float,
                 pool_size: int = 100) -> None:
        self.url = base_url.rstrip("/") + PATH
        self._secret = secret
        self.timeout = (connect_timeout, read_timeout)
        self.deadline = connect_timeout + read_timeout
        parts = urlsplit(self.url)
        ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        options = {"num_pools": 4, "maxsize": pool_size, "block": False, "retries": False}
        if parts.scheme == "https":
            options.update(cert_reqs="CERT_REQUIRED", ca_certs=ca)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            self._http: urllib3.PoolManager = urllib3.ProxyManager(proxy, **options)
        else:
            self._http = urllib3.PoolManager(**options)

    def __repr__(self) -> str:  # never the secret
        return f"PlatformClient({self.url!r})"

    def close(self) -> None:
        self._http.clear()

    def post(self, body: dict, idempotency_key: str) -> Delivery:
        headers = {
            "Content-Type": "application/json",
            "x-internal-secret": self._secret,
            "Idempotency-Key": idempotency_key,
        }
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        deadline = time.monotonic() + self.deadline
        connect, read = self.timeout
        # total: the wait for the answer's head is at most what connecting left of it.
        timeout = urllib3.Timeout(connect=connect, read=read, total=self.deadline)
        try:
            resp = self._http.request("POST", self.url, body=data, headers=headers, timeout=timeout, redirect=False,
                                      retries=False, preload_content=False)
            whole = False
            try:
                chunks = []  # the body, read against the deadline
                for chunk in resp.stream(CHUNK):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        break
                else:
                    whole = True
            finally:
                if whole:
                    resp.release_conn()  # kept alive for the next POST
                else:
                    resp.close()
        except urllib3.exceptions.NewConnectionError as e:  # (a ConnectTimeoutError subclass)
            raise PlatformRetryable(f"connection error: {truncate(str(e), 160)}") from e
        except urllib3.exceptions.TimeoutError as e:
            raise PlatformRetryable(f"timeout: {type(e).__name__}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise PlatformRetryable(f"connection error: {truncate(str(e), 160)}") from e
        if not whole:
            raise PlatformRetryable(f"timeout: no whole answer within {self.deadline:g}s")
        return self._sort(resp.status, resp.headers, b"".join(chunks))

    def _text(self, body: bytes) -> str:
        """The answer's body for a message: truncated, and with the secret masked in case
        the platform (or a proxy) echoes request headers back."""
        return truncate(body.decode("utf-8", "replace").replace(self._secret, "***"))

    def _sort(self, status: int, headers: Mapping[str, str], body: bytes) -> Delivery:
        if 200 <= status < 300:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                return Delivery(ReportOutcome.DELIVERED, status, "", f"unexpected body: {self._text(body)}")
            if status == 200 and doc.get("status") == "skipped":
                return Delivery(ReportOutcome.SKIPPED, status, "", str(doc.get("reason", "")))
            user = doc.get("user_id")
            if status == 201 and doc.get("status") == "logged" and isinstance(user, str):
                return Delivery(ReportOutcome.DELIVERED, status, user, "")
            return Delivery(ReportOutcome.DELIVERED, status, user if isinstance(user, str) else "", f"unexpected body: {self._text(body)}")
        if 300 <= status < 400:
            host = urlsplit(headers.get("Location", "")).hostname or "?"
            raise PlatformRejected(f"HTTP {status} redirect to host {host} (not followed)", status)
        if status in RETRYABLE or status >= 500:
            raise PlatformRetryable(
                f"HTTP {status}: {self._text(body)}", status, parse_retry_after(headers.get("Retry-After"))
            )
        raise PlatformRejected(f"HTTP {status}: {self._text(body)}", status)
