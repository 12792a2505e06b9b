"""A stand-in for the platform API's tunnel-traffic endpoint, served over real HTTP.

The test suite points Celery workers (in other processes) at it, and ``make demo`` /
docker-compose run it as the development platform that logs every report it receives.
It answers like the platform described in docs/design.md ("Platform API contract"), honours
``Idempotency-Key`` as the IETF draft describes (replay, 409 in flight, 422 on another
body), keeps a ledger of what it accepted, and can be told at any moment to misbehave
(5xx, 429 with ``Retry-After``, slowness, dropped connections after commit, redirects),
so that invariant 3 (idempotent delivery; docs/design.md, "Invariants") can be checked
end to end.

Only the standard library is used. Every request is handled on its own daemon thread;
one lock (inside a ``threading.Condition``) guards all state, and the condition is
notified on every change so tests can wait for an outcome instead of sleeping.

Invariant 7: the secret is never logged, echoed or put in an error message.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/api/v1/activity-logs/tunnel-traffic"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1 << 20
MAX_KEY_LENGTH = 1024
INT_FIELDS = ("bytes_in", "bytes_out", "requests")
ERROR_STATUSES = (500, 502, 503)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
SKIPPED_BODY = {"status": "skipped", "reason": "tunnel not found or inactive"}


def user_id_for(subdomain: str) -> str:
    """Return the stable 12-hex user id the stub attributes ``subdomain`` to.

    Derived from the subdomain (not random) so tests and the demo can predict it.
    """
    return hashlib.sha256(subdomain.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Record:
    """One report the stub accepted: logged (billed) or skipped (tunnel unknown)."""

    subdomain: str
    bytes_in: int
    bytes_out: int
    requests: int
    timestamp: str
    key: str | None  # the Idempotency-Key header, None when absent
    received_at: float  # time.time() when the request arrived
    status: int  # 201 logged, 200 skipped
    body: dict[str, Any]  # the JSON body as received


@dataclass
class Attempt:
    """One request the stub saw on the endpoint, whatever it answered.

    Appended to the ledger *before* the answer is written, so a client that has its
    answer always finds the attempt there. ``status`` is None when no answer was sent
    (a drop after commit, or the stub stopping while the request was being processed).
    ``outcome`` is one of: logged, skipped, replayed, in_flight (409 for a key whose
    first request is still running), mismatch (422), conflict (scripted 409), fault
    (scripted or random error), redirect, unauthorized, bad_request, not_found,
    method_not_allowed, dropped, aborted.

    ``lost`` is True when no client still waiting got the answer: a drop after commit,
    an abort, a client that had hung up before the answer was written (it timed out, or
    its process died), or a write that failed. ``answered_at`` is when the answer was
    handed to a still-connected client (None if lost or not answered yet); ``ended_at``
    when the stub was done with the request. ``peer`` is the client's TCP port, ``slow``
    whether ``slow_rate`` picked it.
    """

    method: str
    path: str
    key: str | None
    received_at: float
    status: int | None = None
    outcome: str = ""
    subdomain: str | None = None
    peer: int = 0
    slow: bool = False
    lost: bool = False
    answered_at: float | None = None
    ended_at: float | None = None


@dataclass
class _KeyEntry:
    """What the stub remembers about one Idempotency-Key."""

    fingerprint: str
    done: bool = False
    status: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class _Scripted:
    """A canned answer queued by fail_next / conflict_next / redirect_next."""

    status: int
    payload: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]
    outcome: str


@dataclass
class _Answer:
    """The answer decided for one request, written after the lock is released."""

    status: int
    payload: bytes
    outcome: str
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def _json_bytes(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _error(status: int, outcome: str, message: str, **extra: Any) -> _Answer:
    """Build a JSON error answer ``{"error": message, ...}``."""
    return _Answer(status, _json_bytes({"error": message, **extra}), outcome)


def _parse_report(content_type: str, raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Validate a report body; return (body, "") or (None, reason for a 400)."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return None, "Content-Type must be application/json"
    try:
        data = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None, "body is not JSON"
    if not isinstance(data, dict):
        return None, "body must be a JSON object"
    subdomain = data.get("subdomain")
    if not isinstance(subdomain, str) or not subdomain:
        return None, "subdomain must be a non-empty string"
    for name in INT_FIELDS:
        value = data.get(name)
        # bool is an int subclass: true/false are not byte counts.
        if type(value) is not int or value < 0:
            return None, f"{name} must be a non-negative integer"
    timestamp = data.get("timestamp")
    if not isinstance(timestamp, str):
        return None, "timestamp must be a string"
    try:
        datetime.fromisoformat(timestamp)
    except ValueError:
        return None, "timestamp must be ISO 8601"
    return data, ""


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its stub and tolerates many concurrent clients."""

    daemon_threads = True
    request_queue_size = 128
    stub: PlatformStub


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the stub; HTTP/1.1 so a requests.Session keeps its connection."""

    protocol_version = "HTTP/1.1"
    server_version = "PlatformStub/1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    server: _Server

    def setup(self) -> None:
        """Register the connection so stop() can close it even while kept alive.

        TCP_NODELAY: headers and body go out in two writes; without it Nagle's algorithm
        and the client's delayed ACK add ~40 ms to every answer on a kept-alive connection.
        """
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.stub._track(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.server.stub._untrack(self.connection)

    def _dispatch(self) -> None:
        self.server.stub._handle(self)

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the base class's stderr log; the stub logs itself (without headers)."""


class PlatformStub:
    """The platform's tunnel-traffic endpoint with a ledger and fault injection.

    ``secret``: expected ``x-internal-secret`` (settable at runtime).
    ``skip``: subdomains answered 200 "skipped" (settable at runtime).
    ``dedupe``: honour ``Idempotency-Key``; False models a platform that ignores it.
    ``seed``: seeds the RNG behind ``error_rate`` and ``drop_after_commit``.
    ``verbose``: log every request at INFO (else DEBUG) on this module's logger.
    ``on_record``: called with each accepted :class:`Record` (logged or skipped).

    Order of checks per request: body framing, path and method, scripted answers then
    ``error_rate`` (faults come first, like a proxy in front of the platform; they never
    touch a key), secret (401), body (400), Idempotency-Key (replay / 409 / 422), then
    ``delay`` with the key in flight, commit, and the answer or a drop after commit.
    """

    def __init__(
        self,
        secret: str = "dev-secret",
        skip: Iterable[str] = (),
        dedupe: bool = True,
        seed: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.verbose = verbose
        self.on_record = on_record
        self._seed = seed
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # Requests waiting out ``delay`` wait on their own condition, woken only when the
        # delay changes or the stub stops: on ``_cond`` (notified at every change) each
        # answer would wake every waiting request, and at a few hundred requests a second
        # the stub would spend more CPU than the client it serves.
        self._delay_changed = threading.Condition(lock)
        self._secret = secret
        self._skip = frozenset(skip)
        self._dedupe = dedupe
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._connections: set[socket.socket] = set()
        self._url: str | None = None
        self._init_state()

    def _init_state(self) -> None:
        """(Re)create the ledger, the key store and the fault settings."""
        with self._cond:
            self._rng = random.Random(self._seed)
            self._records: list[Record] = []
            self._skipped: list[Record] = []
            self._attempts: list[Attempt] = []
            self._keys: dict[str, _KeyEntry] = {}
            self._duplicates_deduped = 0
            self._connections_opened = 0
            self._error_rate = 0.0
            self._delay = 0.0
            self._slow_rate = 0.0
            self._slow_delay = 0.0
            self._drop_after_commit = 0.0
            self._drops_pending = 0
            self._script: deque[_Scripted] = deque()
            self._cond.notify_all()
            self._delay_changed.notify_all()

    # ----- lifecycle ---------------------------------------------------------------

    def start(self) -> str:
        """Bind (port 0 = OS-assigned), serve on a daemon thread, return the base URL."""
        with self._cond:
            if self._server is not None:
                raise RuntimeError("platform stub already started")
            self._stopping = False
            server = _Server((self.host, self.port), _Handler)
            server.stub = self
            self._server = server
            port = server.server_address[1]
            shown_host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
            self._url = f"http://{shown_host}:{port}"
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"platform-stub-{port}",
                daemon=True,
            )
            self._thread.start()
            return self._url

    def stop(self) -> None:
        """Stop serving and close every open connection, kept-alive ones included.

        Requests being delayed are abandoned (not recorded, no answer). Idempotent.
        """
        with self._cond:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            self._stopping = True
            connections = list(self._connections)
            self._cond.notify_all()
            self._delay_changed.notify_all()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in connections:
            # OSError: already closed by the client or by its handler.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> PlatformStub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (what PLATFORM_API_URL should be)."""
        if self._url is None:
            raise RuntimeError("platform stub not started")
        return self._url

    @property
    def endpoint(self) -> str:
        """Full URL of the tunnel-traffic endpoint."""
        return self.url + ENDPOINT_PATH

    def _track(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.add(conn)
            self._connections_opened += 1

    def _untrack(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)

    # ----- settings (thread-safe, changeable while serving) ------------------------

    @property
    def secret(self) -> str:
        """The expected ``x-internal-secret``; set it to model a rotated or fixed secret."""
        with self._cond:
            return self._secret

    @secret.setter
    def secret(self, value: str) -> None:
        with self._cond:
            self._secret = value

    @property
    def skip(self) -> frozenset[str]:
        """Subdomains answered 200 "skipped" (tunnel not found or inactive)."""
        with self._cond:
            return self._skip

    @skip.setter
    def skip(self, value: Iterable[str]) -> None:
        with self._cond:
            self._skip = frozenset(value)

    @property
    def dedupe(self) -> bool:
        """Whether Idempotency-Key is honoured (False: every request is recorded)."""
        with self._cond:
            return self._dedupe

    @dedupe.setter
    def dedupe(self, value: bool) -> None:
        with self._cond:
            self._dedupe = bool(value)

    @property
    def error_rate(self) -> float:
        """Probability (seeded RNG) that a request gets 500/502/503 and is not recorded."""
        with self._cond:
            return self._error_rate

    @error_rate.setter
    def error_rate(self, value: float) -> None:
        with self._cond:
            self._error_rate = _probability("error_rate", value)

    @property
    def drop_after_commit(self) -> float:
        """Probability that an accepted report is recorded, then the connection closed unanswered."""
        with self._cond:
            return self._drop_after_commit

    @drop_after_commit.setter
    def drop_after_commit(self, value: float) -> None:
        with self._cond:
            self._drop_after_commit = _probability("drop_after_commit", value)

    @property
    def delay(self) -> float:
        """Seconds an accepted request is processed (key in flight) before commit and answer.

        Re-read while waiting: lowering it releases requests already waiting, so a test
        can hold a request "in flight" for as long as it needs without fixed sleeps.
        """
        with self._cond:
            return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        if value < 0:
            raise ValueError("delay must be >= 0")
        with self._cond:
            self._delay = float(value)
            self._cond.notify_all()
            self._delay_changed.notify_all()

    def slow(self, rate: float, seconds: float) -> None:
        """With probability ``rate`` (seeded RNG), an accepted request is processed for
        ``seconds`` instead of ``delay`` (key in flight), then committed and answered: a
        client whose timeout is shorter gives up and the answer is lost (``Attempt.lost``)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._cond:
            self._slow_rate = _probability("slow rate", rate)
            self._slow_delay = float(seconds)

    # ----- scripted faults ---------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 500,
        retry_after: int | None = None,
        body: dict[str, Any] | str | bytes | None = None,
    ) -> None:
        """Answer the next ``n`` endpoint requests with ``status`` (not recorded).

        ``retry_after`` adds a ``Retry-After`` header (seconds), as a 429 or 503 would.
        ``body``: a dict is sent as JSON, str/bytes as text; default ``{"error": phrase}``.
        """
        if not 400 <= status <= 599:
            raise ValueError("fail_next status must be 4xx or 5xx")
        headers: tuple[tuple[str, str], ...] = ()
        if retry_after is not None:
            headers = (("Retry-After", str(int(retry_after))),)
        if body is None:
            payload, ctype = _json_bytes({"error": _phrase(status)}), "application/json"
        elif isinstance(body, dict):
            payload, ctype = _json_bytes(body), "application/json"
        elif isinstance(body, str):
            payload, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            payload, ctype = bytes(body), "text/plain; charset=utf-8"
        self._queue(n, _Scripted(status, payload, ctype, headers, "fault"))

    def conflict_next(self, n: int) -> None:
        """Answer the next ``n`` endpoint requests 409 (not recorded, key untouched)."""
        payload = _json_bytes({"error": "conflict"})
        self._queue(n, _Scripted(409, payload, "application/json", (), "conflict"))

    def redirect_next(
        self, n: int, status: int = 307, location: str = "http://elsewhere.example/x"
    ) -> None:
        """Answer the next ``n`` endpoint requests with a redirect to ``location``.

        A client must not follow it: it would carry x-internal-secret elsewhere.
        """
        if status not in REDIRECT_STATUSES:
            raise ValueError(f"redirect status must be one of {REDIRECT_STATUSES}")
        payload = _json_bytes({"error": "moved", "location": location})
        headers = (("Location", location),)
        self._queue(n, _Scripted(status, payload, "application/json", headers, "redirect"))

    def drop_next(self, n: int) -> None:
        """Record the next ``n`` accepted reports, then close without answering."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._cond:
            self._drops_pending += n

    def _queue(self, n: int, answer: _Scripted) -> None:
        """Append ``n`` copies of a canned answer to the FIFO of scripted answers."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._cond:
            self._script.extend([answer] * n)

    # ----- ledger ------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        """Logged (201, billed) reports in commit order; a copy."""
        with self._cond:
            return list(self._records)

    @property
    def skipped(self) -> list[Record]:
        """Reports answered 200 "skipped"; a copy."""
        with self._cond:
            return list(self._skipped)

    @property
    def attempts(self) -> list[Attempt]:
        """Every request seen on the endpoint, faulted ones included; a copy."""
        with self._cond:
            return list(self._attempts)

    @property
    def duplicates_deduped(self) -> int:
        """How many requests were answered from the key store instead of being recorded."""
        with self._cond:
            return self._duplicates_deduped

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted so far (shows whether keep-alive is used)."""
        with self._cond:
            return self._connections_opened

    @property
    def pending_keys(self) -> set[str]:
        """Idempotency keys whose first request is still being processed."""
        with self._cond:
            return {k for k, e in self._keys.items() if not e.done}

    def totals(self) -> dict[str, dict[str, int]]:
        """Sum of logged reports per subdomain: bytes_in, bytes_out, requests, reports."""
        out: dict[str, dict[str, int]] = {}
        for rec in self.records:
            t = out.setdefault(
                rec.subdomain, {"bytes_in": 0, "bytes_out": 0, "requests": 0, "reports": 0}
            )
            t["bytes_in"] += rec.bytes_in
            t["bytes_out"] += rec.bytes_out
            t["requests"] += rec.requests
            t["reports"] += 1
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true, re-checking whenever a request arrives or ends.

        Returns the predicate's last result (False on timeout), like Condition.wait_for.
        """
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout))

    def reset(self) -> None:
        """Forget the ledger, the keys and every fault (rates, delay, scripted answers).

        ``secret``, ``skip`` and ``dedupe`` keep their current values; the RNG is reseeded.
        Meant for between scenarios: a request still in flight commits into the new ledger.
        """
        self._init_state()

    # ----- request handling ----------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        """Read one request fully (keep-alive stays in sync), decide, record, answer."""
        method = handler.command
        path = urlsplit(handler.path).path
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            self._write(handler, _Answer(200, _json_bytes({"status": "ok"}), "health"))
            return
        attempt = Attempt(method, path, handler.headers.get("Idempotency-Key"), time.time(),
                          peer=handler.client_address[1] if len(handler.client_address) > 1 else 0)
        raw, problem = self._read_body(handler)
        if problem is not None:
            self._finish(handler, attempt, problem)
            return
        if path != ENDPOINT_PATH:
            self._finish(handler, attempt, _error(404, "not_found", "not found"))
            return
        if method != "POST":
            answer = _error(405, "method_not_allowed", "method not allowed")
            answer.headers.append(("Allow", "POST"))
            self._finish(handler, attempt, answer)
            return
        fault = self._take_fault()
        if fault is not None:
            self._finish(handler, attempt, fault)
            return
        if not self._authorized(handler.headers.get("x-internal-secret")):
            self._finish(handler, attempt, _error(401, "unauthorized", "unauthorized"))
            return
        body, reason = _parse_report(handler.headers.get("Content-Type", ""), raw)
        if body is None:
            self._finish(handler, attempt, _error(400, "bad_request", "bad request", detail=reason))
            return
        attempt.subdomain = body["subdomain"]
        key = attempt.key
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            answer = _error(400, "bad_request", "bad request", detail="invalid Idempotency-Key")
            self._finish(handler, attempt, answer)
            return
        self._process(handler, attempt, body)

    def _process(self, handler: _Handler, attempt: Attempt, body: dict[str, Any]) -> None:
        """Apply Idempotency-Key semantics, wait ``delay``, commit, then answer or drop."""
        key = attempt.key
        fingerprint = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
        ).hexdigest()
        entry: _KeyEntry | None = None
        early: _Answer | None = None
        with self._cond:
            if self._dedupe and key is not None:
                known = self._keys.get(key)
                if known is None:
                    entry = _KeyEntry(fingerprint)
                    self._keys[key] = entry
                    self._cond.notify_all()
                elif known.fingerprint != fingerprint:
                    early = _error(422, "mismatch", "idempotency key reused with a different body")
                elif not known.done:
                    early = _error(
                        409, "in_flight", "a request with this idempotency key is in progress"
                    )
                else:
                    self._duplicates_deduped += 1
                    early = _Answer(known.status, known.payload, "replayed")
                    early.headers.append(("Idempotent-Replayed", "true"))
        if early is not None:
            self._finish(handler, attempt, early)
            return
        committed = False
        try:
            with self._cond:
                if self._slow_rate > 0 and self._rng.random() < self._slow_rate:
                    attempt.slow = True
            if not self._wait_delay(attempt.slow):
                self._abort(handler, attempt)
                return
            record, answer, drop = self._commit(attempt, body, entry)
            committed = True
        finally:
            if entry is not None and key is not None and not committed:
                with self._cond:
                    if self._keys.get(key) is entry:
                        del self._keys[key]
                    self._cond.notify_all()
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:
                logger.exception("platform stub: on_record callback failed")
        if drop:
            # The report is committed and the key completed; the client never hears so.
            self._ended(attempt, lost=True)
            handler.close_connection = True
            return
        self._write(handler, answer, attempt)

    def _commit(
        self, attempt: Attempt, body: dict[str, Any], entry: _KeyEntry | None
    ) -> tuple[Record, _Answer, bool]:
        """Record the report, complete its key, decide a drop, all in one locked step."""
        subdomain = body["subdomain"]
        with self._cond:
            if subdomain in self._skip:
                status, payload, outcome = 200, _json_bytes(SKIPPED_BODY), "skipped"
            else:
                status, outcome = 201, "logged"
                payload = _json_bytes(
                    {"status": "logged", "user_id": user_id_for(subdomain), "subdomain": subdomain}
                )
            record = Record(
                subdomain=subdomain,
                bytes_in=body["bytes_in"],
                bytes_out=body["bytes_out"],
                requests=body["requests"],
                timestamp=body["timestamp"],
                key=attempt.key,
                received_at=attempt.received_at,
                status=status,
                body=body,
            )
            (self._records if status == 201 else self._skipped).append(record)
            if entry is not None:
                entry.done, entry.status, entry.payload = True, status, payload
            drop = False
            if self._drops_pending > 0:
                self._drops_pending -= 1
                drop = True
            elif self._drop_after_commit > 0 and self._rng.random() < self._drop_after_commit:
                drop = True
            attempt.status = None if drop else status
            attempt.outcome = "dropped" if drop else outcome
            self._attempts.append(attempt)
            self._cond.notify_all()
        self._log(attempt, record)
        return record, _Answer(status, payload, outcome), drop

    def _abort(self, handler: _Handler, attempt: Attempt) -> None:
        """The stub is stopping mid-request: record the attempt, answer nothing."""
        with self._cond:
            attempt.outcome = "aborted"
            attempt.lost = True
            attempt.ended_at = time.time()
            self._attempts.append(attempt)
            self._cond.notify_all()
        handler.close_connection = True

    def _wait_delay(self, slow: bool = False) -> bool:
        """Wait until ``delay`` (``slow``: the slow delay) seconds since now have passed;
        False if the stub stops."""
        started = time.monotonic()
        with self._cond:
            while not self._stopping:
                remaining = started + (self._slow_delay if slow else self._delay) - time.monotonic()
                if remaining <= 0:
                    return True
                self._delay_changed.wait(remaining)
            return False

    def _take_fault(self) -> _Answer | None:
        """Pop the next scripted answer, else draw against ``error_rate``."""
        with self._cond:
            if self._script:
                s = self._script.popleft()
                return _Answer(s.status, s.payload, s.outcome, s.content_type, list(s.headers))
            if self._error_rate > 0 and self._rng.random() < self._error_rate:
                status = self._rng.choice(ERROR_STATUSES)
                return _error(status, "fault", _phrase(status))
        return None

    def _authorized(self, presented: str | None) -> bool:
        """Constant-time comparison of the x-internal-secret header with the secret."""
        if presented is None:
            return False
        expected = self.secret.encode("utf-8")
        # http.client decodes header bytes as latin-1: encoding back gives the raw bytes.
        try:
            given = presented.encode("latin-1")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, expected)

    def _read_body(self, handler: _Handler) -> tuple[bytes, _Answer | None]:
        """Read the whole body by Content-Length; on a framing problem answer and close."""
        if handler.headers.get("Transfer-Encoding"):
            answer = _error(411, "bad_request", "Content-Length required")
            answer.close = True
            return b"", answer
        length_header = handler.headers.get("Content-Length", "0")
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            answer = _error(400, "bad_request", "bad request", detail="invalid Content-Length")
            answer.close = True
            return b"", answer
        if length > MAX_BODY_BYTES:
            answer = _error(413, "bad_request", "body too large")
            answer.close = True
            return b"", answer
        try:
            raw = handler.rfile.read(length)
        except OSError:
            raw = b""
        if len(raw) != length:
            answer = _error(400, "bad_request", "bad request", detail="truncated body")
            answer.close = True
            return b"", answer
        return raw, None

    def _finish(self, handler: _Handler, attempt: Attempt, answer: _Answer) -> None:
        """Put the attempt in the ledger, then write the answer."""
        with self._cond:
            attempt.status = answer.status
            attempt.outcome = answer.outcome
            self._attempts.append(attempt)
            self._cond.notify_all()
        self._log(attempt, None)
        self._write(handler, answer, attempt)

    def _ended(self, attempt: Attempt, lost: bool) -> None:
        with self._cond:
            now = time.time()
            attempt.lost = lost
            attempt.answered_at = None if lost else now
            attempt.ended_at = now
            self._cond.notify_all()

    def _write(self, handler: _Handler, answer: _Answer, attempt: Attempt | None = None) -> None:
        """Send status, headers (always Content-Length, for keep-alive) and body. With an
        ``attempt``, record whether a still-connected client got the answer."""
        if attempt is not None and _peer_gone(handler.connection):
            self._ended(attempt, lost=True)
            handler.close_connection = True
            return
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", answer.content_type)
            handler.send_header("Content-Length", str(len(answer.payload)))
            for name, value in answer.headers:
                handler.send_header(name, value)
            if answer.close:
                handler.send_header("Connection", "close")
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(answer.payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True  # the client went away (e.g. it timed out)
            if attempt is not None:
                self._ended(attempt, lost=True)
            return
        if attempt is not None:
            self._ended(attempt, lost=False)

    def _log(self, attempt: Attempt, record: Record | None) -> None:
        """One line per request, in the original service's style; never any header."""
        level = logging.INFO if self.verbose else logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        key = f" key={attempt.key}" if attempt.key else ""
        if record is not None and record.status == 201:
            logger.log(
                level,
                "%s ✅ %s: ↓%dB ↑%dB (%dreq) → User:%s%s%s",
                attempt.status if attempt.status is not None else "---",
                record.subdomain,
                record.bytes_in,
                record.bytes_out,
                record.requests,
                user_id_for(record.subdomain),
                key,
                " (connection dropped after commit)" if attempt.outcome == "dropped" else "",
            )
        else:
            logger.log(
                level,
                "%s %s %s %s%s",
                attempt.status if attempt.status is not None else "---",
                attempt.outcome,
                attempt.method,
                attempt.subdomain or attempt.path,
                key,
            )


def _peer_gone(conn: socket.socket) -> bool:
    """True when the client has closed its end (EOF waiting to be read) or reset it: an
    answer written now would reach no one. Pipelined bytes of a next request are left
    in place (MSG_PEEK)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed
        return True


def _probability(name: str, value: float) -> float:
    """Check that ``value`` is a probability."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    return float(value)


def _phrase(status: int) -> str:
    """Lower-case reason phrase of an HTTP status ("service unavailable")."""
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def main(argv: list[str] | None = None) -> int:
    """Run the stub standalone as the development platform; Ctrl-C or SIGTERM stops it."""
    parser = argparse.ArgumentParser(
        prog="python -m sim.platform_stub",
        description="Development platform endpoint: logs every tunnel-traffic report it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=3000, help="port, 0 = any free port")
    parser.add_argument(
        "--secret",
        default=os.environ.get("PLATFORM_INTERNAL_SECRET", "dev-secret"),
        help="expected x-internal-secret (default: $PLATFORM_INTERNAL_SECRET or dev-secret)",
    )
    parser.add_argument("--skip", default="", help="comma-separated subdomains answered 'skipped'")
    parser.add_argument("--no-dedupe", action="store_true", help="ignore Idempotency-Key")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 5xx answers")
    parser.add_argument("--drop-after-commit", type=float, default=0.0, help="share of drops")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per accepted report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    stub = PlatformStub(
        secret=args.secret,
        skip=[s.strip() for s in args.skip.split(",") if s.strip()],
        dedupe=not args.no_dedupe,
        seed=args.seed,
        host=args.host,
        port=args.port,
        verbose=True,
    )
    stub.error_rate = args.error_rate
    stub.drop_after_commit = args.drop_after_commit
    stub.delay = args.delay

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    url = stub.start()
    bound = f" (bound to {args.host})" if args.host != "127.0.0.1" else ""
    print(f"platform stub listening on {url}{bound}; endpoint {ENDPOINT_PATH}", flush=True)
    try:
        # Short waits keep the main thread responsive to Ctrl-C (KeyboardInterrupt).
        while not stopped.wait(0.5):
            continue
    except KeyboardInterrupt:
        stopped.set()  # Ctrl-C is the normal way to stop it
    finally:
        stub.stop()
        print("platform stub stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
