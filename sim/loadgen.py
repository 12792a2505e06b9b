"""Load generator: real HTTP requests to a Traefik entrypoint, with ground truth.

It sends a mix meant to exercise the counting rule through the real proxy:

- tunnel hosts (``<name>.<domain>``) for several names, in lower, upper and mixed
  case, some with ``:port`` in the Host header, some with a trailing dot;
- other hosts: other domains and lookalikes (``evil<domain>``, ``x.<domain>.evil.com``,
  ``a.b.<domain>``, the bare domain);
- requests Traefik answers itself with a 404 and no ``RouterName``: any host on the
  path ``/no-route/...`` (see ``sim.traefik``), and an empty Host header;
- methods GET, POST, PUT, HEAD; request bodies with Content-Length or chunked; response
  sizes from 0 to about 1 MiB, some answered chunked by the backend;
- with ``websocket_share`` above 0, that share of the requests are WebSocket sessions to
  a tunnel (``sim.ws``: a handshake, a few echoed frames, a close), which Traefik logs as
  one line with both sizes 0.

Ground truth (``truth``) is kept per tunnel name, from the client's side only: the
request body bytes it sent, the response body bytes it received, and the number of
requests -- recorded only once the whole response has been read; a WebSocket session
counts as one request of 0 bytes (what its access line says), and per tunnel in
``unmetered`` (sessions) and ``unmetered_bytes`` (the payload bytes that went through them
both ways, which nobody bills). A tunnel request to
``/no-route`` is answered by Traefik's 404 and counts for the tunnel too (its line has
the tunnel's ``RequestHost``); it is sent without a body. A request that fails (connection
error, timeout) is counted in ``errors`` and not in the truth; exact comparisons require
``errors == 0``.

A request with a Content-Length body (POST/PUT, not chunked, not empty) is sent with
``Connection: close``. Without it Traefik cut the answer now and then under CPU load: the
client got the headers and part of the body (``IncompleteRead``), Traefik logged
``DownstreamStatus`` 200 with ``OriginStatus`` 0, its debug log said ``httputil:
ReverseProxy read error during body copy: ... use of closed network connection``, and the
echo backend got ``ConnectionResetError``. The cause is a race inside Go's net/http
(golang/go#15527, #40747), in Traefik itself:

1. Traefik's transport copies the declared Content-Length straight to the backend socket,
   then reads the client's request body once more, to check it is not longer than
   declared;
2. the backend, having the whole body, answers; Traefik starts writing the answer to the
   client;
3. an HTTP/1 Go server that starts an answer on a connection it means to keep drains and
   *closes* the request body (so that the next request can be read);
4. when the transport's goroutine was descheduled between 1 and its extra read, that read
   now fails (``http: invalid Read on closed Body``), and the transport drops the backend
   connection, the answer half-copied.

With ``Connection: close`` from the client the server will not read another request on
that connection, so it leaves the body alone (step 3 does not happen), and the extra read
finds it open. Chunked request bodies are not exposed: the backend cannot see their end
before the transport has read the body to EOF and closed it itself. Neither are requests
without a body. Not the cause: timeouts (the cut answers took a few ms), the backend's
keep-alive, backlog or resets (Traefik closed its own backend connection, after the
backend had written the whole answer), Traefik's stdout pipe. Under 3 CPU burners every
failure was a Content-Length body (about 1 request in 7 of the mix); with this, none.

``LoadGen`` is thread-safe: ``run()`` may be called from a worker thread while another
thread reads ``truth`` or calls ``stop()``. It only talks to loopback addresses, and
every run is bounded by a number of requests and/or a duration (both capped).
"""

from __future__ import annotations

import http.client
import ipaddress
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sim.ws import WebSocketClient, WebSocketError

DEFAULT_DOMAIN = "t.lum.tools"
DEFAULT_TUNNELS = ("alpha", "bravo-2", "charlie", "delta-echo", "x1")
MAX_REQUESTS = 1_000_000
MAX_DURATION = 24 * 3600.0
REQUEST_TIMEOUT = 15.0

_METHODS = ("GET", "GET", "GET", "POST", "PUT", "HEAD")
_RESPONSE_SIZES = (0, 1, 17, 512, 1000, 4096, 65535, 65536, 100_000, 1_048_576)


@dataclass(frozen=True)
class Planned:
    """One request: what to send, and which tunnel (if any) it is truth for."""

    method: str
    host: str
    path: str
    body: bytes | None
    chunked: bool
    response_size: int
    response_chunked: bool
    tunnel: str | None  # the tunnel it counts for, or None
    kind: str  # tunnel / other / no_route / empty_host / websocket
    frames: int = 0  # a WebSocket session's echoed frames


class LoadGen:
    """Sends the mix to ``127.0.0.1:port`` (or another loopback address)."""

    def __init__(
        self,
        port: int,
        domain: str = DEFAULT_DOMAIN,
        tunnels: list[str] | tuple[str, ...] = DEFAULT_TUNNELS,
        seed: int = 0,
        host: str = "127.0.0.1",
        workers: int = 1,
        websocket_share: float = 0.0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"LoadGen only sends to loopback addresses, not {host!r}")
        if not tunnels:
            raise ValueError("at least one tunnel name is needed")
        self.port = port
        self.domain = domain
        self.tunnels = [t.lower() for t in tunnels]
        self.seed = seed
        self.address = host
        self.workers = max(1, workers)
        self.websocket_share = websocket_share
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._truth: dict[str, dict[str, int]] = {
            name: {"bytes_in": 0, "bytes_out": 0, "requests": 0} for name in self.tunnels
        }
        self._sent = 0
        self._completed = 0
        self._errors = 0
        self._by_kind: dict[str, int] = {}
        self._unmetered: dict[str, int] = {}
        self._unmetered_bytes: dict[str, int] = {}
        self._runs = 0

    # -- results -------------------------------------------------------------------

    @property
    def truth(self) -> dict[str, dict[str, int]]:
        """Per tunnel: request body bytes sent, response body bytes received, requests."""
        with self._lock:
            return {name: dict(v) for name, v in self._truth.items() if v["requests"]}

    @property
    def unmetered(self) -> dict[str, int]:
        """Per tunnel: WebSocket sessions completed (each is also one request in ``truth``)."""
        with self._lock:
            return dict(self._unmetered)

    @property
    def unmetered_bytes(self) -> dict[str, int]:
        """Per tunnel: payload bytes sent and received over its WebSocket sessions."""
        with self._lock:
            return dict(self._unmetered_bytes)

    @property
    def sent(self) -> int:
        """Requests whose sending started (each makes at most one access-log line)."""
        with self._lock:
            return self._sent

    @property
    def completed(self) -> int:
        with self._lock:
            return self._completed

    @property
    def errors(self) -> int:
        with self._lock:
            return self._errors

    @property
    def by_kind(self) -> dict[str, int]:
        """Completed requests per kind: tunnel, other, no_route, empty_host."""
        with self._lock:
            return dict(self._by_kind)

    # -- control -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every running ``run()`` to return after its current request."""
        self._stop.set()

    def run(
        self,
        n_requests: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
    ) -> None:
        """Send requests until ``n_requests`` are sent, ``duration`` s passed or stop().

        ``rate`` (requests per second over all workers) paces the requests; without it
        they go as fast as the workers can.
        """
        if n_requests is None and duration is None:
            raise ValueError("give n_requests or duration: a run must be bounded")
        n_requests = MAX_REQUESTS if n_requests is None else min(n_requests, MAX_REQUESTS)
        duration = MAX_DURATION if duration is None else min(duration, MAX_DURATION)
        with self._lock:
            run_number = self._runs
            self._runs += 1
        deadline = time.monotonic() + duration
        per_worker = [
            n_requests // self.workers + (i < n_requests % self.workers)
            for i in range(self.workers)
        ]
        interval = self.workers / rate if rate else 0.0
        threads = [
            threading.Thread(
                target=self._worker,
                args=(random.Random(f"{self.seed}:{run_number}:{i}"), count, deadline, interval),
                name=f"loadgen-{i}",
                daemon=True,
            )
            for i, count in enumerate(per_worker)
            if count
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- internals -----------------------------------------------------------------

    def plan(self, rng: random.Random) -> Planned:
        """Draw one request of the mix."""
        if self.websocket_share and rng.random() < self.websocket_share:
            name = rng.choice(self.tunnels)
            host = self._tunnel_host(rng, name)
            return Planned("GET", host, f"/ws/{rng.randrange(10**6)}", None, False, rng.choice((0, 1, 1000, 70_000)),
                           False, name, "websocket", frames=rng.randrange(0, 4))
        method = rng.choice(_METHODS)
        body: bytes | None = None
        chunked = False
        if method in ("POST", "PUT"):
            size = rng.choice((0, 1, 100, 4096, 70_000, rng.randrange(1, 300_000)))
            body = bytes([rng.randrange(32, 127)]) * size
            chunked = rng.random() < 0.4
        response_size = rng.choice(_RESPONSE_SIZES)
        response_chunked = rng.random() < 0.3
        path = f"/p/{rng.randrange(10**6)}?q={rng.randrange(100)}"
        roll = rng.random()
        if roll < 0.6:
            name = rng.choice(self.tunnels)
            host = self._tunnel_host(rng, name)
            if rng.random() < 0.05:
                return self._no_route(rng, host, path, name)
            return Planned(
                method, host, path, body, chunked, response_size, response_chunked, name, "tunnel"
            )
        if roll < 0.85:
            host = rng.choice(self._other_hosts(rng))
            return Planned(
                method, host, path, body, chunked, response_size, response_chunked, None, "other"
            )
        if roll < 0.95:
            host = rng.choice(("unknown.invalid", "example.org", "10.0.0.1"))
            return self._no_route(rng, host, path, None)
        return Planned(
            rng.choice(("GET", "HEAD")), "", path, None, False, 0, False, None, "empty_host"
        )

    @staticmethod
    def _no_route(rng: random.Random, host: str, path: str, tunnel: str | None) -> Planned:
        """A request Traefik answers itself with a 404 (no router matches).

        Sent without a body: Traefik never reads it (it logs RequestContentSize 0), and Go
        may close the connection while a large unread body is still being sent, which
        the client would see as an error for a request that was logged.
        """
        # HEAD only when no tunnel counts it: Traefik logs its 404 text (19 bytes) as
        # DownstreamContentSize for a HEAD too, though no body goes to the client.
        method = rng.choice(("GET", "DELETE") if tunnel else ("GET", "HEAD", "DELETE"))
        return Planned(method, host, "/no-route" + path, None, False, 0, False, tunnel, "no_route")

    def _tunnel_host(self, rng: random.Random, name: str) -> str:
        host = f"{name}.{self.domain}"
        style = rng.random()
        if style < 0.15:
            host = host.upper()
        elif style < 0.3:
            host = "".join(c.upper() if rng.random() < 0.5 else c for c in host)
        if rng.random() < 0.1:
            host += "."
        if rng.random() < 0.15:
            host += f":{rng.choice((80, 443, 8080, self.port))}"
        return host

    def _other_hosts(self, rng: random.Random) -> tuple[str, ...]:
        d = self.domain
        name = rng.choice(self.tunnels)
        return (
            "example.com",
            f"evil{d}",
            f"{name}.{d}.evil.com",
            f"a.{name}.{d}",
            d,
            f"www.{d.split('.', 1)[-1]}",
            f"-{name}.{d}",
            f"{name}-.{d}",
        )

    def _worker(self, rng: random.Random, count: int, deadline: float, interval: float) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        try:
            for _ in range(count):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and self._stop.wait(
                        min(delay, max(0.0, deadline - time.monotonic()))
                    ):
                        return
                    next_at = max(next_at + interval, time.monotonic() - 1.0)
                planned = self.plan(rng)
                if conn is None:
                    conn = http.client.HTTPConnection(
                        self.address, self.port, timeout=REQUEST_TIMEOUT
                    )
                with self._lock:
                    self._sent += 1
                if planned.kind == "websocket":
                    self._websocket(planned)
                    continue
                try:
                    received = self._send(conn, planned)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = None
                    with self._lock:
                        self._errors += 1
                    continue
                self._record(planned, received)
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _send(conn: http.client.HTTPConnection, planned: Planned) -> int:
        headers = {"Host": planned.host, "X-Size": str(planned.response_size)}
        if planned.response_chunked:
            headers["X-Chunked"] = "1"
        body: bytes | Iterator[bytes] | None = planned.body
        if planned.body is not None and planned.chunked:
            headers["Transfer-Encoding"] = "chunked"
            body = _pieces(planned.body)
        elif planned.body:
            # Else Traefik may cut the answer (see the module docstring).
            headers["Connection"] = "close"
        conn.request(
            planned.method, planned.path, body=body, headers=headers, encode_chunked=planned.chunked
        )
        resp = conn.getresponse()
        data = resp.read()
        if resp.will_close:
            conn.close()
        return len(data)

    def _websocket(self, planned: Planned) -> None:
        """One WebSocket session on its own connection, closed by this client."""
        payload = b"w" * planned.response_size
        try:
            with WebSocketClient.connect(self.address, self.port, host=planned.host, path=planned.path,
                                         timeout=REQUEST_TIMEOUT) as client:
                for _ in range(planned.frames):
                    if client.echo(payload) != payload:
                        raise WebSocketError("echo differs")
                moved = client.sent + client.received
        except (OSError, WebSocketError):
            with self._lock:
                self._errors += 1
            return
        self._record(planned, 0)
        assert planned.tunnel is not None
        with self._lock:
            self._unmetered[planned.tunnel] = self._unmetered.get(planned.tunnel, 0) + 1
            self._unmetered_bytes[planned.tunnel] = self._unmetered_bytes.get(planned.tunnel, 0) + moved

    def _record(self, planned: Planned, received: int) -> None:
        with self._lock:
            self._completed += 1
            self._by_kind[planned.kind] = self._by_kind.get(planned.kind, 0) + 1
            if planned.tunnel is None:
                return
            slot = self._truth[planned.tunnel]
            slot["bytes_in"] += len(planned.body or b"")
            slot["bytes_out"] += received
            slot["requests"] += 1


def _pieces(body: bytes, piece: int = 16384) -> Iterator[bytes]:
    for start in range(0, len(body), piece):
        yield body[start : start + piece]
