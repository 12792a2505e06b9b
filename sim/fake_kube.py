"""A fake Kubernetes API server, over real HTTP, for pods and their logs.

Why: the scraper reads Traefik pod logs through the official ``kubernetes`` client.
Tests (including Celery workers in subprocesses, which only get a kubeconfig) and the
demo need an apiserver that behaves like the real one in the ways that matter for
exact metering, as listed in docs/design.md ("Kubernetes pod log endpoint"):

* ``sinceTime`` is honoured at whole-second precision (truncated), so a read from a
  cursor re-delivers the lines of the cursor's second;
* ``timestamps=true`` prefixes lines with a fixed-width RFC3339Nano stamp (9 fraction
  digits), or the zero-trimmed form of kubelets older than 1.19;
* ``limitBytes`` cuts the body at exactly that many bytes, mid-line if need be;
* only the current log file is served (a read without ``follow`` loses what rotation
  renamed away before it), ``previous=true`` serves only the last terminated container;
* ``follow=true`` streams the open file, then each line as it is written, as the
  kubelet's ``ReadLogs``/``waitLogs`` do: across a size rotation the renamed file to its
  end, then the new one from its start (nothing lost); the stream ends after the file's
  end once the container no longer runs (a restart at once; an exit or the pod's deletion
  within ``follow_check_period``, 1 s), or at ``limitBytes``; ``stop()`` cuts it
  (``_serve_follow``, ``follow_readers``);
* a terminating pod stays readable during its grace period, a deleted one is 404;
  a graceful deletion runs as the kubelet runs it: ``deletionTimestamp`` is set, the
  containers keep running until they exit (or are killed when the grace period ends),
  and the pod object, with its logs, goes about a second after its last container
  exited (``terminate``, ``exit_container``);
* ``?watch=true`` on the pod list streams ``ADDED``/``MODIFIED``/``DELETED`` events
  from a ``resourceVersion``, with ``timeoutSeconds`` and the selectors, and an
  ``ERROR`` event with a 410 Status once that version is older than the bounded event
  history (``compact_watch_history`` forces it);
* errors are ``Status`` objects with the apiserver's reasons and messages.

Only the read side is served (list/watch/get pods, pod logs), plus
``SelfSubjectAccessReview`` (``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews``,
answered as the apiserver does: see ``_self_review``); the state is changed through the Python
API of :class:`FakeKube` (``add_pod``, ``write``, ``restart``, ``forbid``, ``deny``...). Stdlib
only.
"""

from __future__ import annotations

import bisect
import calendar
import hashlib
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeKube", "ManualClock", "PodNotFound", "format_ts"]

NS_PER_S = 1_000_000_000
DEFAULT_LABELS = {"app.kubernetes.io/name": "traefik"}
# The identity the fake pretends the token belongs to (shown in 403 messages).
SERVICE_ACCOUNT_USER = "system:serviceaccount:traefik-metrics-scraper:traefik-metrics-scraper"
# Bytes the CRI log file spends per line besides the line itself
# ("2026-11-24T01:50:22.123456789Z stdout F " + "\n"), for size-based rotation.
CRI_LINE_OVERHEAD = 41
CHUNK_BYTES = 64 * 1024

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class PodNotFound(KeyError):
    """Raised by the Python API when the named pod does not exist (or is gone)."""


class ManualClock:
    """A controllable clock for FakeKube: call it for epoch nanoseconds.

    Tests pass one as ``FakeKube(clock=ManualClock(...))`` and move time with
    :meth:`advance` / :meth:`set`, so grace periods and second boundaries are exact.
    """

    def __init__(self, start_ns: int = 1_795_000_000 * NS_PER_S) -> None:
        self._ns = start_ns
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._ns

    def advance(self, seconds: float = 0.0, ns: int = 0) -> int:
        """Move the clock forward; returns the new time in ns."""
        with self._lock:
            self._ns += int(round(seconds * NS_PER_S)) + ns
            return self._ns

    def set(self, ns: int) -> None:
        """Jump to an absolute time (epoch ns)."""
        with self._lock:
            self._ns = ns


# --------------------------------------------------------------------------- time


def _rfc3339_seconds(ns: int) -> str:
    """metav1.Time serialisation: RFC3339 at whole seconds, UTC (``...22Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS_PER_S))


def format_ts(ns: int, old_kubelet: bool = False, zone: str | None = None) -> str:
    """The log-line timestamp the kubelet writes for ``timestamps=true``.

    Kubelets >= 1.19 use a fixed-width RFC3339Nano form (9 fraction digits); older
    ones used Go's RFC3339Nano, which trims trailing zeros (and the dot). ``zone``
    (``"+08:00"``): the instant written in that offset, as the kubelet keeps the offset
    of the runtime's stamp (containerd stamps in the node's local zone): it parses the
    CRI file with ``time.Parse(RFC3339NanoLenient)`` and writes
    ``msg.timestamp.Format(RFC3339NanoFixed)`` ("...05.000000000Z07:00", ``Z`` for a
    zero offset), pkg/kubelet/kuberuntime/logs/logs.go (``parseCRILog``,
    ``(*logWriter).write``).
    """
    offset = _zone_seconds(zone)
    sec, frac = divmod(ns + offset * NS_PER_S, NS_PER_S)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    suffix = zone if offset else "Z"
    digits = f"{frac:09d}"
    if old_kubelet:
        digits = digits.rstrip("0")
        return f"{base}.{digits}{suffix}" if digits else f"{base}{suffix}"
    return f"{base}.{digits}{suffix}"


_ZONE = re.compile(r"^[+-](?:[01]\d|2[0-3]):[0-5]\d$")


def _zone_seconds(zone: str | None) -> int:
    """Seconds east of UTC of ``"+HH:MM"`` / ``"-HH:MM"``; 0 for None or ``"Z"``."""
    if zone is None or zone == "Z":
        return 0
    if not _ZONE.match(zone):
        raise ValueError(f"not a UTC offset: {zone!r}")
    sign = 1 if zone[0] == "+" else -1
    return sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def _parse_since_time(text: str) -> int:
    """Parse an RFC3339 ``sinceTime`` to epoch ns, truncated to the whole second.

    The apiserver decodes sinceTime into a metav1.Time and re-encodes it for the
    kubelet with second precision: the fraction is lost. Raises ValueError.
    """
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    offset = m.group(8)
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        secs -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return secs * NS_PER_S


def _parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which the apiserver uses for query booleans."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(text)


# ----------------------------------------------------------------------- selectors

_LABEL_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SEL_SET = re.compile(
    rf"^\s*({_LABEL_KEY})\s+(in|notin)\s+\(\s*({_LABEL_VALUE}(?:\s*,\s*{_LABEL_VALUE})*)\s*\)\s*$"
)
_SEL_EQ = re.compile(rf"^\s*({_LABEL_KEY})\s*(==|=|!=)\s*({_LABEL_VALUE})\s*$")
_SEL_EXISTS = re.compile(rf"^\s*(!?)\s*({_LABEL_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split a selector on commas that are not inside ``( )``."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A predicate for a label selector (``k=v``, ``k!=v``, ``k in (a,b)``, ``k``, ``!k``).

    Raises ValueError with the apiserver's wording for a selector it cannot parse.
    """
    if not text.strip():
        return lambda labels: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for req in _split_top_level(text):
        if m := _SEL_SET.match(req):
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                checks.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                checks.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif m := _SEL_EQ.match(req):
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif m := _SEL_EXISTS.match(req):
            neg, key = m.groups()
            if neg:
                checks.append(lambda lb, k=key: k not in lb)
            else:
                checks.append(lambda lb, k=key: k in lb)
        else:
            raise ValueError(f"unable to parse requirement: {req!r}")
    return lambda labels: all(check(labels) for check in checks)


_FIELD_REQ = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s,]*)\s*$")
_POD_FIELDS = {
    "metadata.name": lambda p: p.name,
    "metadata.namespace": lambda p: p.namespace,
    "status.phase": lambda p: "Running",
    "spec.nodeName": lambda p: "fake-node",
}


def _parse_field_selector(text: str) -> Callable[[_Pod], bool]:
    """A predicate for the few pod field selectors the fake knows; ValueError otherwise."""
    if not text.strip():
        return lambda pod: True
    checks = []
    for req in text.split(","):
        m = _FIELD_REQ.match(req)
        if not m:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{req}'")
        name, op, value = m.groups()
        getter = _POD_FIELDS.get(name)
        if getter is None:
            raise ValueError(f"field label not supported: {name}")
        if op == "!=":
            checks.append(lambda p, g=getter, v=value: g(p) != v)
        else:
            checks.append(lambda p, g=getter, v=value: g(p) == v)
    return lambda pod: all(check(pod) for check in checks)


# ---------------------------------------------------------------------------- state


@dataclass
class _Log:
    """One container log file as the runtime writes it: line bytes and their stamps,
    in file (arrival) order.

    containerd reads stdout and stderr in one goroutine each (``redirectLogs``, started
    per stream by ``NewCRILogger`` in pkg/cri/io/logger.go), stamps each line with
    ``time.Now()`` when its reader has it, then writes it to the one file: stamps are
    monotonic per stream, not across the two.
    """

    stamps: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0  # approximate CRI file size, for size-based rotation
    # Line numbers count from the file's first line ever, dropped ones included.
    served: int = 0  # lines from the start of the file handed out whole by some read
    base: int = 0  # lines dropped from the front: ``lines[0]`` is line number ``base``
    last: dict[str, int] = field(default_factory=dict)  # per stream: the last stamp
    ordered: bool = True  # stamps non-decreasing in file order (a bisect is exact)


@dataclass
class _Container:
    name: str
    image: str
    container_id: str
    started_ns: int
    restart_count: int = 0
    log: _Log = field(default_factory=_Log)
    previous: _Log | None = None
    rotated: list[_Log] = field(default_factory=list)  # renamed away by size rotation, never served
    rotated_at: list[int] = field(default_factory=list)  # instant (ns) of each size rotation, served or not
    last_terminated: dict[str, Any] | None = None


@dataclass(eq=False)
class _Follower:
    """One open ``follow=true`` stream: the kubelet's ``ReadLogs`` in follow mode
    (staging/src/k8s.io/cri-client/pkg/logs/logs.go) with the file it holds open."""

    namespace: str
    name: str
    pod: _Pod  # the pod object it was opened on (a replaced pod is another object)
    container: _Container
    container_id: str  # the container whose log it reads (``isContainerRunning`` asks about it)
    log: _Log  # the open file
    pos: int  # line number (see _Log) of the next line to read from it
    path_log: _Log  # the file the container's log path names now (a size rotation makes a new one)
    creates: int = 0  # Create events of that path not handled yet: size rotations since it opened
    cut: bool = False  # cut_follow_streams: hang up at the next look


@dataclass
class _Pod:
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    containers: dict[str, _Container]  # insertion order: the main container first
    main: str
    created_ns: int
    old_kubelet: bool
    pod_ip: str
    resource_version: int
    deletion_ns: int | None = None
    grace_seconds: float | None = None
    # Containers that exited during the deletion: name -> (finishedAt ns, exit code).
    exited: dict[str, tuple[int, int]] = field(default_factory=dict)
    removal_ns: int | None = None  # when the kubelet deletes the object (all containers exited)


@dataclass(frozen=True)
class _WatchEvent:
    """One entry of the watch history: the object as it was at ``rv``."""

    rv: int
    kind: str  # ADDED, MODIFIED, DELETED
    pod: _Pod  # for the selectors (name, namespace and labels never change)
    labels: dict[str, str]
    body: bytes  # the serialised event line, newline included


def _new_container_id() -> str:
    return "containerd://" + secrets.token_hex(32)


def _image_for(container: str) -> str:
    if container == "traefik":
        return "docker.io/library/traefik:v3.7.15"
    return f"docker.io/library/{container}:latest"


def _image_id(image: str) -> str:
    repo = image.rsplit(":", 1)[0]
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


class ApiError(Exception):
    """An error answer: HTTP code plus the Status message (and optional details)."""

    def __init__(self, code: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _status_body(code: int, message: str, details: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections so stop() can cut them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address):
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        """Stay quiet when a client hangs up (timeouts, stop()); report anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to FakeKube; speaks HTTP/1.1 with keep-alive like the apiserver."""

    protocol_version = "HTTP/1.1"
    # Headers, chunks and the last chunk go out in separate writes: without TCP_NODELAY
    # each answer can stall ~40 ms on the client's delayed ACK (Nagle), and a benchmark
    # would measure that instead of the scraper.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr logging; FakeKube.requests records them."""

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def _other_method(self) -> None:
        """Writes are not served: logged in ``requests``, then answered 405."""
        self.server.fake._handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = _other_method

    # helpers used by FakeKube._handle
    def send_json(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_chunked(self, chunks: Iterable[bytes], before_end: Callable[[], None] | None = None) -> None:
        """Stream a text/plain body with chunked transfer encoding, as the apiserver does.
        ``before_end`` runs once every chunk was written, before the last (empty) chunk
        that lets the client finish reading."""
        self.begin_chunked()
        for chunk in chunks:
            self.write_chunk(chunk)
        if before_end is not None:
            before_end()
        self.end_chunked()

    def begin_chunked(self) -> None:
        """The status line and headers of a chunked text/plain body, sent now."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, chunk: bytes) -> None:
        """One chunk of the body, flushed (an empty one is skipped: it would end the body)."""
        if chunk:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

    def end_chunked(self) -> None:
        """The last (empty) chunk: the client has the whole body."""
        self.wfile.write(b"0\r\n\r\n")

    def client_gone(self) -> bool:
        """True once the client closed its side (EOF on the socket), without blocking: a
        follow stream waiting for lines ends then, as the kubelet's does when the request's
        context is cancelled (``waitLogs``: ``case <-ctx.Done()``)."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # nothing to read: still there
        except OSError:
            return True  # reset, or closed by stop()


class FakeKube:
    """An in-process fake Kubernetes API (pods, pod logs) served on 127.0.0.1.

    Change state with the Python methods; read it over HTTP with the official client
    (see :meth:`write_kubeconfig`). All state sits behind one lock, so requests and
    the Python API can run from any number of threads.
    """

    def __init__(
        self,
        clock: Callable[[], int] | None = None,
        token: str = "test-token",
        *,
        rotate_bytes: int | None = None,
        rotate_every: float = 10.0,
    ) -> None:
        """``clock`` returns epoch ns (default ``time.time_ns``).

        ``rotate_bytes``, if set, rotates a running container's log the way the kubelet's
        container log manager does (pkg/kubelet/logs/container_log_manager.go): every
        ``rotate_every`` seconds (``ContainerLogMonitorInterval``, default 10 s: ``Start``
        runs ``rotateLogs`` under ``wait.Forever`` with ``monitoringPeriod``) it looks at
        each running container's current log file, and one whose size is at least
        ``rotate_bytes`` (``containerLogMaxSize``, default ``10Mi``; both defaults in
        pkg/kubelet/apis/config/v1beta1/defaults.go) is renamed away
        (``rotateLatestLog``: ``Rename`` then ``ReopenContainerLog``, after which the
        runtime writes to a new, empty file). The kubelet serves only the current file
        (``ReadLogs`` opens the container's log path, staging/src/k8s.io/cri-client/pkg/
        logs/logs.go), so the lines of the renamed file that no read returned before the
        rotation are unreachable: :meth:`unserved` lists them (an open ``follow=true``
        stream still reads the renamed file to its end: see :meth:`_serve_follow`). The checks come at
        ``rotate_every`` from this object's creation (the kubelet's own start), on
        ``clock``; ``rotate_every=0`` checks at every write."""
        self.clock: Callable[[], int] = clock or time.time_ns
        self.token = token
        self.rotate_bytes = rotate_bytes
        self.rotate_every_ns = int(rotate_every * NS_PER_S)
        self._next_rotation_check = self.clock() + self.rotate_every_ns
        self.rotations = 0  # size rotations done
        self.url = ""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every log write
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = 1
        # Watch events, oldest first, bounded like the apiserver's watch cache; a watch
        # from a resourceVersion older than the floor gets 410 Gone.
        self._history: deque[_WatchEvent] = deque()
        self.watch_history = 1000  # events kept
        self._history_floor = self._rv  # every event after this version is kept
        # Seconds from a pod's last container exit to the removal of the pod object.
        self.removal_delay = 1.0
        self._ip_seq = 10
        self._fail: list[list] = []  # [remaining, status, path_contains]
        self._forbidden = False
        self._denied: set[tuple[str, str]] = set()  # (verb, resource[/subresource]) not granted
        self._delay = 0.0
        self._log_setup: dict[tuple[str, str], dict[str, Any]] = {}  # configure_log, per pod name
        self._followers: list[_Follower] = []  # open follow=true streams
        # Seconds a follow stream waits at the end of its file when nothing is written:
        # the kubelet's ``logForceCheckPeriod`` (1 s, the timer in ``waitLogs``), after
        # which it reads on and asks the runtime whether the container still runs; an
        # exited container or a deleted pod ends the stream only then (see _serve_follow).
        self.follow_check_period = 1.0
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Start serving on an OS-assigned port; returns the base URL."""
        self._stopped.clear()
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits up to one poll
            name="fake-kube",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and cut open (keep-alive) connections; open follow streams end
        without their last chunk (the client sees the connection drop)."""
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()  # wake the follow streams waiting for lines
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            open_sockets = list(server.open_sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue  # already closed by the other side
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._changed:  # the follow streams' threads unregister as they end
            self._changed.wait_for(lambda: not self._followers, timeout=2)
        self._server = None

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path) -> str:
        """Write a kubeconfig for this server (token auth, namespace ``traefik``).

        It is JSON, which is valid YAML, so ``kubernetes.config.load_kube_config``
        reads it. Returns the path as a string.
        """
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": "traefik"},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2))
        return str(path)

    # ---------------------------------------------------------- pod lifecycle

    def add_pod(
        self,
        name: str,
        namespace: str = "traefik",
        labels: dict[str, str] | None = None,
        container: str = "traefik",
        extra_containers: Iterable[str] = (),
        uid: str | None = None,
        old_kubelet: bool = False,
    ) -> str:
        """Create a running pod; returns its uid. ``old_kubelet`` makes its log
        timestamps zero-trimmed (kubelets < 1.19). ValueError if the name is taken."""
        template = {
            "labels": dict(DEFAULT_LABELS if labels is None else labels),
            "container": container,
            "extra_containers": tuple(extra_containers),
            "old_kubelet": old_kubelet,
        }
        with self._lock:
            if self._live(namespace, name) is not None:
                raise ValueError(f'pods "{name}" already exists')
            return self._create(name, namespace, template, uid)

    def replace_pod(self, name: str, namespace: str = "traefik", uid: str | None = None) -> str:
        """Delete the pod now and create one with the same name and spec, a new uid,
        new container ids and empty logs (what a StatefulSet does). Works also after
        the old pod is gone. Returns the new uid."""
        with self._lock:
            template = self._templates.get((namespace, name))
            if template is None:
                raise PodNotFound(f"{namespace}/{name}")
            old = self._pods.pop((namespace, name), None)
            if old is not None:
                old.resource_version = self._bump()
                self._emit("DELETED", old)
            return self._create(name, namespace, template, uid)

    def delete(self, name: str, namespace: str = "traefik") -> None:
        """Remove the pod at once (``kubectl delete --grace-period=0 --force``, or a lost
        node's pods being cleaned up): 404 on get and log, absent from lists, a
        ``DELETED`` watch event."""
        with self._lock:
            pod = self._require(namespace, name)
            del self._pods[(namespace, name)]
            pod.resource_version = self._bump()
            self._emit("DELETED", pod)

    def terminate(self, name: str, grace_seconds: float, namespace: str = "traefik") -> None:
        """Start a graceful deletion, as ``kubectl delete`` (or a rolling update) does.

        Like the apiserver, sets ``metadata.deletionTimestamp`` to now + grace and
        ``deletionGracePeriodSeconds`` (a ``MODIFIED`` event). The containers keep running
        (the test may keep writing lines) until :meth:`exit_container`, or until the
        grace period ends, when the kubelet kills what is left (exit code 137). The pod
        object and its logs go ``removal_delay`` seconds after the last container exited
        (then 404 and a ``DELETED`` event).

        Upstream: kubernetes.io "Termination of Pods" (docs/concepts/workloads/pods/
        pod-termination: SIGTERM, then KILL once the grace period expired, "and the Pod
        is then deleted from the API Server"); the kubelet's status manager deletes the
        object with grace 0 once every container is terminated (kubernetes commit
        "wires together the graceful delete option for pods on the Kubelet": "if the pod
        has DeletionTimestamp set and all containers are terminated, the Kubelet will
        update the status one last time and then invoke Delete(pod, grace: 0)").
        """
        with self._lock:
            pod = self._require(namespace, name)
            pod.deletion_ns = self.clock() + int(round(grace_seconds * NS_PER_S))
            pod.grace_seconds = grace_seconds
            pod.resource_version = self._bump()
            self._emit("MODIFIED", pod)

    def exit_container(self, name: str, namespace: str = "traefik", container: str | None = None,
                       exit_code: int = 0) -> int:
        """A container of a terminating pod exits now (Traefik finished its in-flight
        requests after SIGTERM): its status becomes ``state.terminated`` with
        ``finishedAt`` (a ``MODIFIED`` event). ``container`` None: every container still
        running. Once none is left, the pod goes ``removal_delay`` seconds later.
        Returns the exit time (ns). Write no line to an exited container."""
        with self._lock:
            pod = self._require(namespace, name)
            if pod.deletion_ns is None:
                raise ValueError(f"pod {name} is not terminating: terminate() it first (or restart() it)")
            names = [self._container(pod, container).name] if container else list(pod.containers)
            now = self.clock()
            self._stop_containers(pod, [n for n in names if n not in pod.exited], now, exit_code)
            return now

    def restart(
        self,
        name: str,
        namespace: str = "traefik",
        container: str | None = None,
        exit_code: int = 0,
    ) -> None:
        """The container terminates and the kubelet starts a new one.

        The current log becomes the previous log (only the last terminated container
        is kept), the container gets a new id, restartCount + 1, and
        ``lastState.terminated`` describes the old one (with its containerID).
        """
        with self._lock:
            pod = self._require(namespace, name)
            c = self._container(pod, container)
            now = self.clock()
            c.last_terminated = {
                "containerID": c.container_id,
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": _rfc3339_seconds(c.started_ns),
                "finishedAt": _rfc3339_seconds(now),
            }
            c.previous = c.log
            c.log = _Log()
            c.container_id = _new_container_id()
            c.restart_count += 1
            c.started_ns = now
            pod.resource_version = self._bump()
            self._emit("MODIFIED", pod)

    def rotate(
        self,
        name: str,
        keep_last: int = 0,
        namespace: str = "traefik",
        container: str | None = None,
    ) -> None:
        """Kubelet log rotation: only the last ``keep_last`` lines of the current log
        stay reachable; the rest are gone for good, for an open follow stream too (this
        forces a loss; size rotation, ``rotate_bytes``, is the kubelet's rename, which a
        follow stream survives)."""
        with self._lock:
            pod = self._require(namespace, name)
            log = self._container(pod, container).log
            drop = max(0, len(log.lines) - keep_last)
            dropped = log.lines[:drop]
            del log.lines[:drop]
            del log.stamps[:drop]
            log.base += drop
            log.size -= sum(len(line) + CRI_LINE_OVERHEAD for line in dropped)
            for f in self._followers:
                if f.log is log:
                    f.pos = max(f.pos, log.base)
            self._changed.notify_all()

    # ------------------------------------------------------------------ logs

    def configure_log(
        self,
        name: str,
        namespace: str = "traefik",
        *,
        zone: str | None = None,
        skew: dict[str, float | Callable[[], float]] | None = None,
    ) -> None:
        """How the node of pod ``name`` stamps and serves its log lines (kept across
        restarts and replacements of the pod).

        ``zone`` (``"+08:00"``, ``"-05:30"``; None or ``"Z"``: UTC): containerd stamps
        in the node's local zone and the kubelet keeps the offset, so the lines are
        served with stamps in that offset (the same instants).

        ``skew``: per stream (``"stdout"``, ``"stderr"``), seconds added to ``clock()``
        when the fake stamps a line of that stream (``write`` without ``ts_ns``,
        ``append_now``), or a callable giving them per line. The runtime reads each
        stream in its own goroutine and stamps a line when its reader has it, so the
        file (arrival order) is monotonic per stream only: a stderr line can carry a
        stamp a little before or after the stdout line written just before it
        (``redirectLogs`` in containerd's pkg/cri/io/logger.go, one per stream, stamp
        ``time.Now()``). A stream's stamps still never go backwards.
        """
        _zone_seconds(zone)  # ValueError early
        with self._lock:
            self._log_setup[(namespace, name)] = {"zone": zone, "skew": dict(skew or {})}

    def write(
        self,
        name: str,
        line: bytes | str,
        ts_ns: int | None = None,
        namespace: str = "traefik",
        container: str | None = None,
        *,
        stream: str = "stdout",
    ) -> int:
        """Append one log line (without its newline) to the pod's current container.

        ``ts_ns`` defaults to ``clock()`` (plus the stream's skew, see
        :meth:`configure_log`); returns the timestamp used. ``stream`` is ``"stdout"``
        or ``"stderr"``: timestamps must not go backwards within a stream
        (ValueError), as in a real log file; across the two streams they may.
        """
        return self.write_many(name, [line], ts_ns, namespace, container, stream=stream)

    def write_many(
        self,
        name: str,
        lines: Iterable[bytes | str],
        ts_ns: int | None = None,
        namespace: str = "traefik",
        container: str | None = None,
        *,
        stream: str = "stdout",
    ) -> int:
        """Append many lines of one stream that all carry the same timestamp; returns it."""
        encoded = [_encode_line(line) for line in lines]
        with self._lock:
            pod = self._require(namespace, name)
            c = self._container(pod, container)
            now = self.clock()  # one instant for the rotation check and the stamp
            ts = self._stamp(namespace, name, stream, now) if ts_ns is None else ts_ns
            self._append(c, encoded, ts, clamp=False, stream=stream, now=now)
            return ts

    def attach_stream(
        self,
        name: str,
        stream: IO[bytes],
        namespace: str = "traefik",
        container: str | None = None,
    ) -> threading.Thread:
        """Feed a binary stream (e.g. a process's stdout pipe) into the pod's log.

        A daemon thread reads line by line and stamps each with ``clock()`` on arrival
        (never earlier than the previous line, should the wall clock step back). Lines
        arriving while the pod does not exist are dropped, but the stream is still
        drained so the writer never blocks. The thread ends at EOF.
        """
        with self._lock:
            self._container(self._require(namespace, name), container)  # fail early

        def pump() -> None:
            for raw in iter(stream.readline, b""):
                self.append_now(name, raw[:-1] if raw.endswith(b"\n") else raw, namespace, container)

        thread = threading.Thread(target=pump, name=f"fake-kube-stream-{name}", daemon=True)
        thread.start()
        return thread

    def append_now(
        self,
        name: str,
        line: bytes,
        namespace: str = "traefik",
        container: str | None = None,
        *,
        stream: str = "stdout",
        ts_ns: int | None = None,
    ) -> bool:
        """Append one line of a live process's output, stamped with ``clock()`` (plus
        the stream's skew) on arrival but never earlier than the previous line of its
        stream. False (line dropped) while the pod does not exist.

        ``ts_ns``: the stamp the caller's reader of ``stream`` took when it read the line
        (as containerd's per-stream reader does before it writes to the file), used
        instead of ``clock()``; the line still lands in arrival order, so with two
        readers a line can follow one of the other stream stamped later."""
        with self._lock:
            pod = self._live(namespace, name)
            if pod is None:
                return False
            now = self.clock()
            ts = self._stamp(namespace, name, stream, now) if ts_ns is None else ts_ns
            self._append(self._container(pod, container), [line], ts, clamp=True, stream=stream, now=now)
            return True

    def _stamp(self, namespace: str, name: str, stream: str, now: int) -> int:
        """The stamp the runtime's reader of ``stream`` gives a line arriving at ``now``."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        skew = self._log_setup.get((namespace, name), {}).get("skew", {}).get(stream, 0.0)
        seconds = skew() if callable(skew) else skew
        return now + int(round(seconds * NS_PER_S))

    # ------------------------------------------------------------ inspection

    def container_id(
        self, name: str, namespace: str = "traefik", container: str | None = None
    ) -> str:
        """The current ``containerID`` of a container (``containerd://<hex>``)."""
        with self._lock:
            return self._container(self._require(namespace, name), container).container_id

    def pod_uid(self, name: str, namespace: str = "traefik") -> str:
        """The pod's current uid."""
        with self._lock:
            return self._require(namespace, name).uid

    def log_lines(
        self, name: str, namespace: str = "traefik", container: str | None = None
    ) -> list[tuple[int, bytes]]:
        """The reachable current log as (timestamp ns, line) pairs."""
        with self._lock:
            log = self._container(self._require(namespace, name), container).log
            return list(zip(log.stamps, log.lines, strict=True))

    def wait_for_lines(
        self,
        name: str,
        count: int,
        timeout: float,
        namespace: str = "traefik",
        container: str | None = None,
    ) -> bool:
        """Block until the pod's current log holds at least ``count`` lines (e.g. fed
        by :meth:`attach_stream`); False if ``timeout`` seconds pass first."""

        def enough() -> bool:
            pod = self._live(namespace, name)
            return pod is not None and len(self._container(pod, container).log.lines) >= count

        with self._changed:
            return self._changed.wait_for(enough, timeout)

    def cut_follow_streams(self, name: str, namespace: str = "traefik") -> int:
        """Drop the open ``follow=true`` streams of pod ``name`` as an apiserver restart
        would: each hangs up without its last chunk, within about 50 ms (the client sees
        the connection drop). Returns how many."""
        with self._changed:
            mine = [f for f in self._followers if (f.namespace, f.name) == (namespace, name)]
            for f in mine:
                f.cut = True
            self._changed.notify_all()
        return len(mine)

    def follow_readers(self, name: str, namespace: str = "traefik") -> int:
        """How many ``follow=true`` streams of pod ``name``'s logs are open now: a stream
        counts from when its request was accepted (before its answer's headers) until its
        thread is done with it (after its last chunk, or once the client went away or
        :meth:`stop` cut it)."""
        with self._lock:
            return sum(1 for f in self._followers if (f.namespace, f.name) == (namespace, name))

    def wait_follow_readers(self, name: str, count: int, timeout: float, namespace: str = "traefik") -> bool:
        """Block until exactly ``count`` follow streams of pod ``name`` are open (see
        :meth:`follow_readers`); False if ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(1 for f in self._followers if (f.namespace, f.name) == (namespace, name)) == count,
                timeout,
            )

    # ------------------------------------------------------- fault injection

    def fail_next(self, n: int, status: int = 500, path_contains: str = "") -> None:
        """The next ``n`` requests whose path contains ``path_contains`` get ``status``
        with a Status body (after authentication)."""
        if n <= 0:
            return
        with self._lock:
            self._fail.append([n, status, path_contains])

    def clear_failures(self, path_contains: str | None = None) -> int:
        """Drop the injected failures still pending (only those queued with this
        ``path_contains``, if given), e.g. to end an outage of one pod's log that was
        queued as ``fail_next(10**9, 500, "/pods/<name>/log")``. Returns how many
        ``fail_next`` entries were dropped."""
        with self._lock:
            keep = [e for e in self._fail if path_contains is not None and e[2] != path_contains]
            dropped = len(self._fail) - len(keep)
            self._fail[:] = keep
            return dropped

    def forbid(self, on: bool = True) -> None:
        """While on, every authenticated request gets 403 with the RBAC-style message
        (a SelfSubjectAccessReview is still answered, with ``allowed: false``)."""
        with self._lock:
            self._forbidden = on

    def deny(self, verb: str, resource: str, on: bool = True) -> None:
        """RBAC without one permission, e.g. ``deny("get", "pods/log")``: requests that
        need it get 403, and a SelfSubjectAccessReview for it answers ``allowed: false``.
        The granted set is the scraper's Role: pods get/list/watch, pods/log get."""
        with self._lock:
            (self._denied.add if on else self._denied.discard)((verb, resource))

    def delay(self, seconds: float) -> None:
        """Sleep this long before answering each log request (0 to turn off)."""
        with self._lock:
            self._delay = seconds

    # --------------------------------------------------------------- internals

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _create(self, name: str, namespace: str, template: dict[str, Any], uid: str | None) -> str:
        now = self.clock()
        names = [template["container"], *template["extra_containers"]]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate container names: {names}")
        containers = {
            n: _Container(
                name=n, image=_image_for(n), container_id=_new_container_id(), started_ns=now
            )
            for n in names
        }
        self._ip_seq += 1
        pod = _Pod(
            name=name,
            namespace=namespace,
            uid=uid or str(uuid.uuid4()),
            labels=dict(template["labels"]),
            containers=containers,
            main=template["container"],
            created_ns=now,
            old_kubelet=template["old_kubelet"],
            pod_ip=f"10.42.{self._ip_seq // 250}.{self._ip_seq % 250 + 1}",
            resource_version=self._bump(),
        )
        self._pods[(namespace, name)] = pod
        self._templates[(namespace, name)] = template
        self._emit("ADDED", pod)
        return pod.uid

    def _live(self, namespace: str, name: str) -> _Pod | None:
        """The pod if it exists, after the steps of its deletion that are due by now."""
        pod = self._pods.get((namespace, name))
        if pod is None or pod.deletion_ns is None:
            return pod
        now = self.clock()
        if now >= pod.deletion_ns:  # the grace period is over: the kubelet kills what runs
            self._stop_containers(pod, [n for n in pod.containers if n not in pod.exited], pod.deletion_ns, 137)
        if pod.removal_ns is not None and now >= pod.removal_ns:
            del self._pods[(namespace, name)]
            pod.resource_version = self._bump()
            self._emit("DELETED", pod)
            return None
        return pod

    def _stop_containers(self, pod: _Pod, names: list[str], at_ns: int, exit_code: int) -> None:
        """Containers of a terminating pod exit at ``at_ns``; the pod object goes
        ``removal_delay`` after the last one."""
        if not names:
            return
        for n in names:
            pod.exited[n] = (at_ns, exit_code)
        if len(pod.exited) == len(pod.containers):
            pod.removal_ns = max(t for t, _ in pod.exited.values()) + int(round(self.removal_delay * NS_PER_S))
        pod.resource_version = self._bump()
        self._emit("MODIFIED", pod)

    def _reap(self) -> None:
        """Apply every pod's due deletion steps (their watch events included)."""
        for ns, name in list(self._pods):
            self._live(ns, name)

    def _emit(self, kind: str, pod: _Pod) -> None:
        """Record a watch event with the pod as it is now (its resourceVersion bumped by
        the caller) and wake the watches. Holds the lock."""
        obj = {"kind": "Pod", "apiVersion": "v1", **self._pod_json(pod)}
        body = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        if len(self._history) >= self.watch_history:
            self._history_floor = self._history.popleft().rv
        self._history.append(_WatchEvent(pod.resource_version, kind, pod, dict(pod.labels), body))
        self._changed.notify_all()

    def compact_watch_history(self) -> None:
        """Forget every watch event so far (like an etcd compaction): a watch from an
        older resourceVersion then gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._history_floor = self._rv

    def _require(self, namespace: str, name: str) -> _Pod:
        pod = self._live(namespace, name)
        if pod is None:
            raise PodNotFound(f"{namespace}/{name}")
        return pod

    @staticmethod
    def _container(pod: _Pod, container: str | None) -> _Container:
        try:
            return pod.containers[container or pod.main]
        except KeyError:
            raise ValueError(f"container {container} is not valid for pod {pod.name}") from None

    def _append(self, c: _Container, lines: list[bytes], ts: int, clamp: bool, stream: str, now: int) -> None:
        """Append lines of one stream, in arrival order; stamps never go backwards
        within the stream (ValueError, or clamped to its last stamp)."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        self._check_rotation(now)  # the checks before the line arrived; a line stamped at clock() lands after them
        log = c.log
        last = log.last.get(stream)
        if last is not None and ts < last:
            if not clamp:
                raise ValueError(f"timestamp {ts} is before the last {stream} line's {last} in {c.name}")
            ts = last
        if log.stamps and ts < log.stamps[-1]:
            log.ordered = False
        log.last[stream] = ts
        log.stamps.extend([ts] * len(lines))
        log.lines.extend(lines)
        log.size += sum(len(line) + CRI_LINE_OVERHEAD for line in lines)
        if self.rotate_bytes is not None and self.rotate_every_ns <= 0 and log.size >= self.rotate_bytes:
            self._rotate_file(c, ts)
        self._changed.notify_all()

    def _rotate_file(self, c: _Container, at_ns: int) -> None:
        """Rename the current file away at ``at_ns`` and start a new one (the kubelet's
        ``rotateLatestLog``); keep what no read returned of it, for :meth:`unserved`, and
        what a follow stream holding it has not read yet (it reads the renamed file to
        its end). A follow stream of this container gets the Create event of the new file
        at its log path (``waitLogs`` returns ``recreated``)."""
        c.rotated_at.append(at_ns)
        old = c.log
        c.log = _Log(last=dict(old.last))  # the runtime's readers go on stamping
        keep_from = old.served
        for f in self._followers:
            if f.log is old:
                keep_from = min(keep_from, f.pos)
            if f.container is c and f.container_id == c.container_id:
                f.creates += 1
                f.path_log = c.log
        drop = keep_from - old.base
        if drop > 0:
            del old.lines[:drop]
            del old.stamps[:drop]
            old.base = keep_from
        if old.lines:
            c.rotated.append(old)
        self.rotations += 1
        self._changed.notify_all()

    def _check_rotation(self, now: int | None = None) -> None:
        """The kubelet's periodic size check, for every check time that has passed by
        ``now`` (default: the clock; the state did not change since then: this runs before
        every change and read)."""
        if self.rotate_bytes is None or self.rotate_every_ns <= 0:
            return
        if now is None:
            now = self.clock()
        if now < self._next_rotation_check:
            return
        behind = (now - self._next_rotation_check) // self.rotate_every_ns
        checked_at = self._next_rotation_check  # the first check that passed: nothing changed since it
        self._next_rotation_check += (behind + 1) * self.rotate_every_ns
        for pod in self._pods.values():
            for cname, c in pod.containers.items():
                # Only running containers are rotated (rotateLogs skips the others).
                if cname not in pod.exited and c.log.size >= self.rotate_bytes:
                    self._rotate_file(c, checked_at)

    def unserved(self, name: str | None = None, namespace: str = "traefik") -> list[tuple[int, bytes]]:
        """(stamp ns, line) of every line that size rotation renamed away before any read
        returned it (of pod ``name``, or of every pod), oldest first per container: the
        lines a reader of the API could no longer get. Exact once no read is in flight; a
        follow stream holding a renamed file still sends its lines, which then leave this
        list as they are sent."""
        return [item for lost in self.unserved_files(name, namespace) for item in lost]

    def rotation_instants(self, name: str, namespace: str = "traefik") -> list[int]:
        """Instant (ns, on ``clock``) of every size rotation of pod ``name``'s containers,
        oldest first per container, whether or not a read had returned every line of the
        renamed file: each old file's lines are stamped at or before its instant, the new
        file's at or after it (when written at ``clock``'s time)."""
        with self._lock:
            self._check_rotation()
            pod = self._pods[(namespace, name)]
            return [at for c in pod.containers.values() for at in c.rotated_at]

    def unserved_files(self, name: str | None = None, namespace: str = "traefik") -> list[list[tuple[int, bytes]]]:
        """Per file renamed away by size rotation with lines no read returned: those lines
        (see :meth:`unserved`), in rotation order per container."""
        out: list[list[tuple[int, bytes]]] = []
        with self._lock:
            self._check_rotation()
            pods = [p for (ns, n), p in self._pods.items() if name is None or (ns, n) == (namespace, name)]
            for pod in pods:
                for c in pod.containers.values():
                    for old in c.rotated:
                        skip = max(0, old.served - old.base)  # kept for a follow stream but served
                        if skip < len(old.lines):
                            out.append(list(zip(old.stamps[skip:], old.lines[skip:], strict=True)))
        return out

    # ------------------------------------------------------------------- HTTP

    def _handle(self, req: _Handler) -> None:
        """Answer one request; every error is a Status object."""
        length = int(req.headers.get("Content-Length") or 0)
        # Read the body: keeps the keep-alive connection in step; a review POST needs it.
        req.body = req.rfile.read(length) if length else b""
        parts = urlsplit(req.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append((req.command, path, query))
        try:
            self._authorize(req, path)
            self._route(req, path, query)
        except ApiError as err:
            req.send_json(err.code, _status_body(err.code, err.message, err.details))

    def _authorize(self, req: _Handler, path: str) -> None:
        """401 without the token, 403 while forbidden, then any injected failure."""
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")
        if req.command == "POST" and path.rstrip("/") == SELF_REVIEW_PATH:
            # Every authenticated identity may ask about itself (system:basic-user).
            self._fail_injected(path)
            return
        with self._lock:
            if self._forbidden:
                raise _forbidden_error(req.command, path)
            attrs = _request_attributes(req.command, path, req.path)
            if attrs in self._denied:
                raise _denied_error(*attrs, path)
        self._fail_injected(path)

    def _fail_injected(self, path: str) -> None:
        """An injected failure for this path, if one is pending (see ``fail_next``)."""
        with self._lock:
            for entry in self._fail:
                remaining, status, path_contains = entry
                if path_contains in path:
                    if remaining <= 1:
                        self._fail.remove(entry)
                    else:
                        entry[0] = remaining - 1
                    raise ApiError(status, f"injected failure ({status})")

    def _route(self, req: _Handler, path: str, query: dict[str, str]) -> None:
        seg = [s for s in path.split("/") if s]
        if req.command == "POST" and "/" + "/".join(seg) == SELF_REVIEW_PATH:
            req.send_json(201, _self_review_of(self, req.body))
            return
        if req.command != "GET":
            raise ApiError(
                405,
                f"the server does not allow this method on the requested resource ({req.command})",
            )
        if seg == ["api", "v1", "pods"] or (len(seg) == 5 and seg[:3] == ["api", "v1", "namespaces"] and seg[4] == "pods"):
            namespace = seg[3] if len(seg) == 5 else None
            try:
                watching = _parse_bool(query["watch"]) if "watch" in query else False
            except ValueError:
                raise ApiError(400, f'invalid boolean value: "{query["watch"]}"') from None
            if watching:
                self._serve_watch(req, namespace, query)
            else:
                req.send_json(200, self._list(namespace, query))
        elif len(seg) == 6 and seg[:3] == ["api", "v1", "namespaces"] and seg[4] == "pods":
            req.send_json(200, self._get(seg[3], seg[5]))
        elif (
            len(seg) == 7
            and seg[:3] == ["api", "v1", "namespaces"]
            and seg[4] == "pods"
            and seg[6] == "log"
        ):
            self._serve_log(req, seg[3], seg[5], query)
        else:
            raise ApiError(404, "the server could not find the requested resource")

    def _list(self, namespace: str | None, query: dict[str, str]) -> dict:
        try:
            by_labels = _parse_label_selector(query.get("labelSelector", ""))
            by_fields = _parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        with self._lock:
            items = []
            for ns, name in sorted(self._pods):
                if namespace is not None and ns != namespace:
                    continue
                pod = self._live(ns, name)
                if pod is not None and by_labels(pod.labels) and by_fields(pod):
                    items.append(self._pod_json(pod))
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _serve_watch(self, req: _Handler, namespace: str | None, query: dict[str, str]) -> None:
        """``GET .../pods?watch=true``: a chunked stream of JSON event lines.

        Upstream semantics (kubernetes/website content/en/docs/reference/using-api/
        api-concepts.md, "Efficient detection of changes"): list, then watch from the
        list's ``resourceVersion``; the server sends every change *after* that version,
        one ``{"type": ..., "object": ...}`` per line, ``Transfer-Encoding: chunked``,
        ``Content-Type: application/json``; with no version (or "0") it starts with an
        ``ADDED`` event per existing object. History is kept for a limited time: a
        version older than it fails with 410 Gone, and the client must list again.
        That failure is not an HTTP status but an ``ERROR`` event whose object is the
        Status (kubernetes staging/src/k8s.io/apiserver/pkg/storage/cacher/cacher.go:
        "other errors must fail with a watch event of type ERROR, rather than a
        directly returned error", ``newErrWatcher``; watch_cache.go:
        ``errors.NewResourceExpired(fmt.Sprintf("too old resource version: %d (%d)",
        resourceVersion, oldest-1))``, reason Expired, code 410). ``timeoutSeconds``
        ends the stream (staging/.../endpoints/handlers/get.go: without it the server
        picks minRequestTimeout x [1, 2), 1800 s by default). The official Python
        client's ``Watch.stream`` (kubernetes/watch/watch.py) turns an ``ERROR`` event
        into ``ApiException(status=code)``, retrying a 410 once by itself only when no
        ``timeout_seconds`` was given.
        """
        try:
            by_labels = _parse_label_selector(query.get("labelSelector", ""))
            by_fields = _parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        try:
            seconds = int(query.get("timeoutSeconds") or 0) or 1800
        except ValueError:
            raise ApiError(400, f'timeoutSeconds: invalid value "{query["timeoutSeconds"]}"') from None
        rv_text = query.get("resourceVersion", "")
        if rv_text not in ("", "0") and not rv_text.isdigit():
            raise ApiError(400, f'invalid resource version: "{rv_text}"')

        def wanted(event_ns: str, pod: _Pod, labels: dict[str, str]) -> bool:
            return (namespace is None or event_ns == namespace) and by_labels(labels) and by_fields(pod)

        deadline = time.monotonic() + seconds
        first: list[bytes] = []
        with self._lock:
            self._reap()
            if rv_text in ("", "0"):
                since = self._rv
                for ns, name in sorted(self._pods):
                    pod = self._pods[(ns, name)]
                    if wanted(ns, pod, pod.labels):
                        obj = {"kind": "Pod", "apiVersion": "v1", **self._pod_json(pod)}
                        first.append(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            else:
                since = int(rv_text)
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()

        def send(lines: list[bytes]) -> None:
            for line in lines:
                req.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))

        send(first)
        while not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._changed:
                self._reap()  # timed steps (a container killed at the end of its grace) happen now
                if since < self._history_floor:
                    expired = _status_body(
                        410, f"too old resource version: {since} ({self._history_floor})"
                    )
                    lines, since = [json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n"], -1
                else:
                    news = [e for e in self._history if e.rv > since]
                    lines = [e.body for e in news if wanted(e.pod.namespace, e.pod, e.labels)]
                    if news:
                        since = news[-1].rv
                    else:
                        self._changed.wait(min(0.05, remaining))
            send(lines)
            if since < 0:
                break  # after an ERROR event the apiserver ends the watch
        req.wfile.write(b"0\r\n\r\n")

    def _get(self, namespace: str, name: str) -> dict:
        with self._lock:
            pod = self._live(namespace, name)
            if pod is None:
                raise _not_found(name)
            body = self._pod_json(pod)
        return {"kind": "Pod", "apiVersion": "v1", **body}

    def _pod_json(self, pod: _Pod) -> dict:
        """The pod as the apiserver shows it (the fields the official client models)."""
        meta: dict[str, Any] = {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "resourceVersion": str(pod.resource_version),
            "creationTimestamp": _rfc3339_seconds(pod.created_ns),
            "labels": dict(pod.labels),
        }
        if pod.deletion_ns is not None:
            meta["deletionTimestamp"] = _rfc3339_seconds(pod.deletion_ns)
            meta["deletionGracePeriodSeconds"] = int(pod.grace_seconds or 0)
        statuses = []
        for c in pod.containers.values():
            state: dict[str, Any] = {"running": {"startedAt": _rfc3339_seconds(c.started_ns)}}
            if c.name in pod.exited:
                finished, code = pod.exited[c.name]
                state = {
                    "terminated": {
                        "containerID": c.container_id,
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": _rfc3339_seconds(c.started_ns),
                        "finishedAt": _rfc3339_seconds(finished),
                    }
                }
            statuses.append(
                {
                    "name": c.name,
                    "containerID": c.container_id,
                    "image": c.image,
                    "imageID": _image_id(c.image),
                    "ready": "running" in state,
                    "started": "running" in state,
                    "restartCount": c.restart_count,
                    "state": state,
                    "lastState": {"terminated": dict(c.last_terminated)}
                    if c.last_terminated
                    else {},
                }
            )
        return {
            "metadata": meta,
            "spec": {
                "nodeName": "fake-node",
                "containers": [{"name": c.name, "image": c.image} for c in pod.containers.values()],
            },
            "status": {
                "phase": "Running",
                "hostIP": "192.168.1.10",
                "podIP": pod.pod_ip,
                "podIPs": [{"ip": pod.pod_ip}],
                "startTime": _rfc3339_seconds(pod.created_ns),
                "containerStatuses": statuses,
            },
        }

    def _serve_log(self, req: _Handler, namespace: str, name: str, query: dict[str, str]) -> None:
        """``GET .../pods/{name}/log``: the container's current log file (or, with
        ``previous``, the last terminated container's) as the kubelet serves it; with
        ``follow=true`` see :meth:`_serve_follow`."""
        opts = _log_options(query)
        with self._lock:
            pause = self._delay
        if pause > 0 and self._stopped.wait(pause):
            return  # stopping: hang up without an answer
        with self._lock:
            self._check_rotation()
            pod = self._live(namespace, name)
            if pod is None:
                raise _not_found(name)
            cname = opts["container"]
            if cname is None:
                if len(pod.containers) > 1:
                    raise ApiError(
                        400,
                        f"a container name must be specified for pod {name}, "
                        f"choose one of: [{' '.join(pod.containers)}]",
                    )
                cname = pod.main
            c = pod.containers.get(cname)
            if c is None:
                raise ApiError(400, f"container {cname} is not valid for pod {name}")
            log = c.log
            if opts["previous"]:
                if c.previous is None:
                    raise ApiError(
                        400, f'previous terminated container "{cname}" in pod "{name}" not found'
                    )
                log = c.previous
            start = 0
            if opts["tailLines"] is not None:
                start = max(0, len(log.lines) - opts["tailLines"])
            since = opts["sinceTime"]
            if opts["sinceSeconds"] is not None:
                since = self.clock() - opts["sinceSeconds"] * NS_PER_S
            old = pod.old_kubelet
            zone = self._log_setup.get((namespace, name), {}).get("zone")
            if opts["follow"]:
                # The container is resolved once, when the request arrives: the kubelet's
                # GetKubeletContainerLogs (pkg/kubelet/kubelet_pods.go) takes the running
                # container's ID from the pod status (validateContainerLogStatus; the last
                # terminated one for previous=true), GetContainerLogs
                # (pkg/kubelet/kuberuntime/kuberuntime_container.go) its log path, and
                # (*kubeGenericRuntimeManager).ReadLogs (pkg/kubelet/kuberuntime/
                # kuberuntime_logs.go) hands both to logs.ReadLogs, which opens that file.
                cid = c.container_id if not opts["previous"] else (c.last_terminated or {}).get("containerID", "")
                follower = _Follower(namespace, name, pod, c, cid, log, log.base + start, path_log=log)
                self._followers.append(follower)
            else:
                follower = None
                first = log.base  # line number of lines[0] (see _Log)
                stamps = log.stamps[start:]
                lines = log.lines[start:]
                if since is not None:
                    # The kubelet tests every line on its own: ``if msg.timestamp.Before(
                    # w.opts.since) { return nil }`` in (*logWriter).write, called by ReadLogs
                    # for each parsed line (pkg/kubelet/kuberuntime/logs/logs.go; since 1.30
                    # staging/src/k8s.io/cri-client/pkg/logs/logs.go). Stamps are instants (the
                    # zone is only how they are written). The file is in arrival order and its
                    # stamps are monotonic per stream only, so a line older than sinceTime after
                    # a newer one is dropped alone: no bisect, unless the stamps are sorted.
                    if log.ordered:
                        cut = bisect.bisect_left(stamps, since)
                        stamps, lines = stamps[cut:], lines[cut:]
                        positions = range(start + cut, start + cut + len(lines))
                    else:
                        keep = [i for i, ts in enumerate(stamps) if ts >= since]
                        stamps, lines = [stamps[i] for i in keep], [lines[i] for i in keep]
                        positions = [start + i for i in keep]
                else:
                    positions = range(start, start + len(lines))
        if follower is not None:
            self._serve_follow(req, follower, since, opts["timestamps"], old, opts["limitBytes"], zone)
            return
        sent = [0]  # lines sent whole

        def note_served() -> None:
            # Before the body's end: the client cannot have the whole answer before this.
            if sent[0]:
                with self._lock:
                    log.served = max(log.served, first + positions[sent[0] - 1] + 1)

        req.send_chunked(_log_chunks(stamps, lines, opts["timestamps"], old, opts["limitBytes"], zone, sent), note_served)

    def _serve_follow(
        self,
        req: _Handler,
        f: _Follower,
        since: int | None,
        timestamps: bool,
        old_kubelet: bool,
        limit: int | None,
        zone: str | None,
    ) -> None:
        """``follow=true``: the kubelet's ``ReadLogs`` in follow mode, with ``waitLogs``
        (staging/src/k8s.io/cri-client/pkg/logs/logs.go).

        From the open file (``f.log``, from ``tailLines`` back if given) every line is
        sent as it is read, skipped alone if stamped before ``since``; each batch goes out
        at once as chunks, flushed, without waiting for ``CHUNK_BYTES``. At the end of the
        file ``waitLogs`` first asks whether the container still runs
        (``isContainerRunning``): if not, the file is read once more to its end and the
        stream ends (the last chunk). If it runs, it waits for an event of the log
        directory (fsnotify) or ``logForceCheckPeriod`` (:attr:`follow_check_period`):
        a Write reads on from the same file; the Create event of the log's own path (a
        size rotation renamed the file away and the runtime opened a new one) opens the
        path again and reads the new file from its start. The events come in order and the
        runtime writes to the renamed file only before the new one exists, so the old file
        is read to its end first: nothing is lost across a rotation. (Behind by two
        rotations, it opens the path's newest file at the first Create and again from its
        start at the second, as upstream does.) A restart creates the new container's
        file in the same directory (an event), so the old stream ends at once; an exit, or
        the pod's deletion (the fake stops its containers with the object), creates no
        event: the stream ends at the next timer, within ``follow_check_period``.
        ``limitBytes`` ends the stream once that many bytes were sent, mid-line if need be
        (``errMaximumWrite``). A line counts as served (:meth:`unserved`) once its last
        byte was written to the socket. :meth:`stop` hangs up without the last chunk; a
        client that closed its side ends the stream (the request's context is cancelled).
        """
        remaining = limit
        found = True  # waitLogs' first result: the container still ran at the last wait
        try:
            # The kubelet writes zero bytes before it reads (GetKubeletContainerLogs): the
            # answer's headers go out at once, before any line.
            req.begin_chunked()
            while True:
                with self._lock:
                    if self._stopped.is_set() or f.cut:
                        req.close_connection = True
                        return  # hang up, no last chunk
                    log = f.log
                    stamps, lines, positions = _follow_take(f, since)
                if lines:
                    sent = [0]  # lines of this batch sent whole
                    for chunk in _log_chunks(stamps, lines, timestamps, old_kubelet, remaining, zone, sent):
                        req.write_chunk(chunk)
                        if remaining is not None:
                            remaining -= len(chunk)
                        self._note_follow_served(log, positions, sent[0])  # chunks before this one
                    self._note_follow_served(log, positions, sent[0])
                    if remaining == 0:
                        break  # limitBytes reached
                if not found:
                    break  # "The container is not running, we got to the end of the log."
                with self._changed:
                    found = self._follow_wait(f, req)
            req.end_chunked()
        finally:
            with self._changed:
                self._followers.remove(f)
                self._changed.notify_all()

    def _note_follow_served(self, log: _Log, positions: list[int], sent: int) -> None:
        if sent:
            with self._lock:
                log.served = max(log.served, positions[sent - 1] + 1)

    def _follow_running(self, f: _Follower) -> bool:
        """``isContainerRunning`` for the stream's container: its pod object still there,
        the container not restarted (same ID) and not exited. Holds the lock."""
        pod = self._live(f.namespace, f.name)
        return (
            pod is f.pod
            and f.container.container_id == f.container_id
            and f.container.name not in pod.exited
        )

    def _follow_wait(self, f: _Follower, req: _Handler) -> bool:
        """``waitLogs`` at the end of the open file; returns its ``found`` (False: the
        container no longer runs; read to the end once more, then end). Holds the lock
        (``self._changed``); waits on it, woken by writes, rotations and pod changes, and
        every 50 ms for what happens on the clock alone (grace periods, rotation checks)."""
        self._check_rotation()
        if not self._follow_running(f):
            return False
        deadline = time.monotonic() + self.follow_check_period
        while not self._stopped.is_set():
            if f.pos < f.log.base + len(f.log.lines):
                return True  # a Write event (it comes before the Create of a rotation)
            if f.creates:  # the Create event of the log path: open it again, read from its start
                f.creates -= 1
                f.log = f.path_log
                f.pos = f.log.base
                return True
            if f.container.container_id != f.container_id:
                return True  # the restarted container's new file: a Create of another name
            left = deadline - time.monotonic()
            if left <= 0:
                return True  # logForceCheckPeriod: read on
            if req.client_gone():
                raise ConnectionAbortedError("the client closed the follow stream")
            self._changed.wait(min(left, 0.05))
            self._check_rotation()
            self._live(f.namespace, f.name)
        return True


def _follow_take(f: _Follower, since: int | None) -> tuple[list[int], list[bytes], list[int]]:
    """What a follow stream reads of its open file from where it is to the end, lines
    stamped before ``since`` skipped: (stamps, lines, line numbers). Holds the lock."""
    log = f.log
    i = max(0, f.pos - log.base)
    stamps, lines = log.stamps[i:], log.lines[i:]
    first = log.base + i
    f.pos = log.base + len(log.lines)
    if since is None:
        return stamps, lines, list(range(first, first + len(lines)))
    keep = [k for k, ts in enumerate(stamps) if ts >= since]
    return [stamps[k] for k in keep], [lines[k] for k in keep], [first + k for k in keep]


def _encode_line(line: bytes | str) -> bytes:
    data = line.encode() if isinstance(line, str) else bytes(line)
    if b"\n" in data:
        raise ValueError("a log line must not contain a newline")
    return data


def _log_options(query: dict[str, str]) -> dict[str, Any]:
    """Validate the pod log query like the apiserver (400 BadRequest / 422 Invalid)."""
    opts: dict[str, Any] = {"container": query.get("container") or None}
    try:
        for key in ("timestamps", "previous", "follow"):
            opts[key] = _parse_bool(query[key]) if key in query else False
    except ValueError as err:
        raise ApiError(400, f'invalid boolean value: "{err}"') from None
    for key, minimum in (("limitBytes", 1), ("tailLines", 0), ("sinceSeconds", 1)):
        if key not in query:
            opts[key] = None
            continue
        try:
            value = int(query[key])
        except ValueError:
            raise ApiError(400, f'{key}: invalid value "{query[key]}"') from None
        if value < minimum:
            raise ApiError(422, f"PodLogOptions is invalid: {key}: must be >= {minimum}")
        opts[key] = value
    opts["sinceTime"] = None
    if "sinceTime" in query:
        try:
            opts["sinceTime"] = _parse_since_time(query["sinceTime"])
        except ValueError:
            raise ApiError(
                400, f'parsing time "{query["sinceTime"]}" as RFC3339: cannot parse'
            ) from None
    if opts["sinceTime"] is not None and opts["sinceSeconds"] is not None:
        raise ApiError(
            422,
            "PodLogOptions is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified",
        )
    return opts


def _log_chunks(
    stamps: list[int],
    lines: list[bytes],
    timestamps: bool,
    old_kubelet: bool,
    limit: int | None,
    zone: str | None = None,
    sent: list[int] | None = None,
) -> Iterator[bytes]:
    """The log body in chunks of about CHUNK_BYTES, cut at exactly ``limit`` bytes;
    stamps written in ``zone`` (see :func:`format_ts`). ``sent[0]`` counts the lines
    whose every byte was handed to the consumer (for :meth:`FakeKube.unserved`)."""
    remaining = limit
    buf: list[bytes] = []
    size = 0
    pending = 0  # lines in buf
    prefix_sec = None
    prefix_cache = b""
    offset = _zone_seconds(zone)
    suffix = zone.encode() if offset else b"Z"
    for ts, line in zip(stamps, lines, strict=True):
        if timestamps:
            if old_kubelet:
                piece = format_ts(ts, True, zone).encode() + b" " + line + b"\n"
            else:
                sec, frac = divmod(ts, NS_PER_S)
                if sec != prefix_sec:
                    prefix_sec = sec
                    prefix_cache = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec + offset)).encode()
                piece = b"%s.%09d%s %s\n" % (prefix_cache, frac, suffix, line)
        else:
            piece = line + b"\n"
        if remaining is not None:
            if len(piece) >= remaining:
                whole = len(piece) == remaining
                buf.append(piece[:remaining])
                yield b"".join(buf)
                if sent is not None:
                    sent[0] += pending + whole
                return
            remaining -= len(piece)
        buf.append(piece)
        pending += 1
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
            if sent is not None:
                sent[0] += pending
            pending = 0
    if buf:
        yield b"".join(buf)
        if sent is not None:
            sent[0] += pending


def _not_found(name: str) -> ApiError:
    return ApiError(404, f'pods "{name}" not found', {"name": name, "kind": "pods"})


def _forbidden_error(method: str, path: str) -> ApiError:
    """The apiserver's RBAC denial message for this request."""
    seg = [s for s in path.split("/") if s]
    verb = {
        "GET": "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }.get(method, method.lower())
    scope = "at the cluster scope"
    resource, name = "pods", None
    if len(seg) >= 4 and seg[:3] == ["api", "v1", "namespaces"]:
        scope = f'in the namespace "{seg[3]}"'
        if len(seg) >= 6:
            name = seg[5]
        if len(seg) >= 7:
            resource = f"pods/{seg[6]}"
    if name is None and verb == "get":
        verb = "list"
    subject = f'pods "{name}"' if name else "pods"
    message = (
        f'{subject} is forbidden: User "{SERVICE_ACCOUNT_USER}" cannot {verb} resource '
        f'"{resource}" in API group "" {scope}'
    )
    details = {"kind": "pods"} if name is None else {"name": name, "kind": "pods"}
    return ApiError(403, message, details)


# SelfSubjectAccessReview ------------------------------------------------------------------
#
# As the apiserver answers it (kubernetes/kubernetes):
# - pkg/registry/authorization/selfsubjectaccessreview/rest.go: ``Create`` validates the
#   review, asks the authorizer about the requesting user, and returns the review with
#   ``status.allowed`` (decision Allow), ``status.denied`` (decision Deny) and
#   ``status.reason``; the handler answers 201 Created.
# - pkg/apis/authorization/validation/validation.go: exactly one of ``resourceAttributes``
#   and ``nonResourceAttributes`` ("exactly one of nonResourceAttributes or
#   resourceAttributes must be specified"), and ``metadata`` must be empty (422 Invalid).
# - plugin/pkg/auth/authorizer/rbac/rbac.go: RBAC allows with the reason
#   ``RBAC: allowed by <binding>`` and otherwise has no opinion (allowed false, denied false,
#   no reason).
# - plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go: the ClusterRole
#   ``system:basic-user``, bound to every authenticated user, grants ``create`` on
#   ``selfsubjectaccessreviews``: an identity without any other permission can still ask.

SELF_REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
# The scraper's Role (k8s rbac.yaml), as the fake grants it (any namespace: the fake does not
# scope its pods by RBAC namespace).
GRANTED = frozenset({("get", "pods"), ("list", "pods"), ("watch", "pods"), ("get", "pods/log")})
ROLE_REASON = (
    'RBAC: allowed by RoleBinding "traefik-metrics-scraper-log-reader/traefik" of Role '
    '"traefik-metrics-scraper-log-reader" to ServiceAccount "traefik-metrics-scraper/traefik-metrics-scraper"'
)
DISCOVERY_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz")
DISCOVERY_REASON = (
    'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" '
    'to Group "system:authenticated"'
)


def _request_attributes(method: str, path: str, raw_path: str) -> tuple[str, str]:
    """(verb, resource[/subresource]) of a pods request, as RBAC sees it."""
    seg = [s for s in path.split("/") if s]
    query = parse_qs(urlsplit(raw_path).query)
    if method != "GET":
        return method.lower(), "pods"
    if len(seg) >= 7:
        return "get", f"pods/{seg[6]}"
    if len(seg) == 6:
        return "get", "pods"
    watching = query.get("watch", ["false"])[-1].lower() in ("true", "1")
    return ("watch" if watching else "list"), "pods"


def _denied_error(verb: str, resource: str, path: str) -> ApiError:
    seg = [s for s in path.split("/") if s]
    scope = f'in the namespace "{seg[3]}"' if len(seg) >= 4 and seg[2] == "namespaces" else "at the cluster scope"
    name = seg[5] if len(seg) >= 6 else None
    subject = f'pods "{name}"' if name else "pods"
    message = (f'{subject} is forbidden: User "{SERVICE_ACCOUNT_USER}" cannot {verb} resource "{resource}" '
               f'in API group "" {scope}')
    return ApiError(403, message, {"name": name, "kind": "pods"} if name else {"kind": "pods"})


def _invalid_review(field: str, value: object, detail: str) -> ApiError:
    message = (f'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: {field}: Invalid value: '
               f"{json.dumps(value)}: {detail}")
    causes = [{"reason": "FieldValueInvalid", "message": f"Invalid value: {json.dumps(value)}: {detail}", "field": field}]
    return ApiError(422, message, {"group": "authorization.k8s.io", "kind": "SelfSubjectAccessReview", "causes": causes})


def _self_review_of(fake: FakeKube, body: bytes) -> dict:
    try:
        review = json.loads(body or b"{}")
    except ValueError:
        raise ApiError(400, "the body of the request was in an unknown format") from None
    if not isinstance(review, dict) or review.get("kind", "SelfSubjectAccessReview") != "SelfSubjectAccessReview":
        raise ApiError(400, "the body of the request was not a SelfSubjectAccessReview")
    meta = {k: v for k, v in (review.get("metadata") or {}).items() if k != "managedFields" and v}
    if meta:
        raise _invalid_review("metadata", meta, "must be empty")
    spec = review.get("spec") or {}
    resource_attrs, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if resource_attrs is not None and non_resource is not None:
        raise _invalid_review("spec.nonResourceAttributes", non_resource,
                              "cannot be specified in combination with resourceAttributes")
    if resource_attrs is None and non_resource is None:
        raise _invalid_review("spec.resourceAttributes", None,
                              "exactly one of nonResourceAttributes or resourceAttributes must be specified")
    reason = ""
    with fake._lock:
        if resource_attrs is not None:
            verb = resource_attrs.get("verb", "")
            sub = resource_attrs.get("subresource", "")
            resource = resource_attrs.get("resource", "") + (f"/{sub}" if sub else "")
            allowed = (resource_attrs.get("group", "") == "" and (verb, resource) in GRANTED
                       and not fake._forbidden and (verb, resource) not in fake._denied)
            reason = ROLE_REASON if allowed else ""
        else:
            path = non_resource.get("path", "")
            allowed = non_resource.get("verb") == "get" and (
                path in DISCOVERY_PATHS or path.startswith(("/api/", "/apis/")))
            reason = DISCOVERY_REASON if allowed else ""
    status: dict[str, Any] = {"allowed": allowed}
    if reason:
        status["reason"] = reason
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
