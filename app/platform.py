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
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from app.errors import PlatformRejected, PlatformRetryable, truncate
from app.model import ReportOutcome

PATH = "/api/v1/activity-logs/tunnel-traffic"
RETRYABLE = {408, 409, 425, 429}


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
    """One per worker process (an HTTP session keeps connections alive)."""

    def __init__(self, base_url: str, secret: str, connect_timeout: float, read_timeout: float) -> None:
        self.url = base_url.rstrip("/") + PATH
        self._secret = secret
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.verify = True  # redirects: allow_redirects=False on every request

    def __repr__(self) -> str:  # never the secret
        return f"PlatformClient({self.url!r})"

    def close(self) -> None:
        self.session.close()

    def post(self, body: dict, idempotency_key: str) -> Delivery:
        headers = {
            "Content-Type": "application/json",
            "x-internal-secret": self._secret,
            "Idempotency-Key": idempotency_key,
        }
        data = json.dumps(body, separators=(",", ":"), sort_keys=True)
        try:
            resp = self.session.post(self.url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False)
        except requests.Timeout as e:
            raise PlatformRetryable(f"timeout: {type(e).__name__}") from e
        except requests.ConnectionError as e:
            raise PlatformRetryable(f"connection error: {truncate(str(e), 160)}") from e
        except requests.RequestException as e:
            raise PlatformRetryable(f"request failed: {truncate(str(e), 160)}") from e
        return self._sort(resp)

    def _text(self, resp: requests.Response) -> str:
        """The answer's body for a message: truncated, and with the secret masked in case
        the platform (or a proxy) echoes request headers back."""
        return truncate(resp.text.replace(self._secret, "***"))

    def _sort(self, resp: requests.Response) -> Delivery:
        status = resp.status_code
        if 200 <= status < 300:
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                return Delivery(ReportOutcome.DELIVERED, status, "", f"unexpected body: {self._text(resp)}")
            if status == 200 and doc.get("status") == "skipped":
                return Delivery(ReportOutcome.SKIPPED, status, "", str(doc.get("reason", "")))
            user = doc.get("user_id")
            if status == 201 and doc.get("status") == "logged" and isinstance(user, str):
                return Delivery(ReportOutcome.DELIVERED, status, user, "")
            return Delivery(ReportOutcome.DELIVERED, status, user if isinstance(user, str) else "", f"unexpected body: {self._text(resp)}")
        if 300 <= status < 400:
            host = urlsplit(resp.headers.get("Location", "")).hostname or "?"
            raise PlatformRejected(f"HTTP {status} redirect to host {host} (not followed)", status)
        if status in RETRYABLE or status >= 500:
            raise PlatformRetryable(
                f"HTTP {status}: {self._text(resp)}", status, parse_retry_after(resp.headers.get("Retry-After"))
            )
        raise PlatformRejected(f"HTTP {status}: {self._text(resp)}", status)
