"""Traefik pods and their logs, through the official Kubernetes client.

Auth: in-cluster config first (the ServiceAccount token), then ``KUBECONFIG``.

The client's ``read_namespaced_pod_log`` has no ``since_time`` (``sinceTime`` is
missing from the OpenAPI spec), so the log request is built with
``ApiClient.param_serialize`` and sent with ``call_api``, and the urllib3 response
is streamed in chunks instead of read whole.

The pod watch (``list_pods_at`` then ``watch_pods``) uses the client's
``kubernetes.watch.Watch().stream(CoreV1Api.list_namespaced_pod, ...)``. With
``timeout_seconds`` given, that stream never retries by itself: an ``ERROR`` event is
raised as an ``ApiException`` with the event's code (``watch/watch.py`` in client 37),
and a 410 (the resourceVersion is older than the apiserver's history) becomes
:class:`app.errors.WatchExpired`, upon which the caller lists again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import urllib3

from app.errors import (
    KubeError,
    KubeForbidden,
    KubeUnavailable,
    NoPreviousLog,
    PodGone,
    WatchExpired,
    time_left,
    truncate,
)

if TYPE_CHECKING:
    from kubernetes import client

log = logging.getLogger(__name__)


class _Kubernetes:
    """The official client, imported at first use: it loads every API model, about 22 MiB
    of RSS in each process that imports it (maxrss of ``python -c 'import app.kube'`` 23 MiB,
    with ``kubernetes.client`` too 45 MiB), and beat, the report workers and the metrics
    exporter never call the Kubernetes API (they import this module through the task
    modules). A fetch worker's pool process imports it when it creates its LogSource."""

    def __getattr__(self, name: str) -> Any:
        import kubernetes.client
        import kubernetes.config
        import kubernetes.watch
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException

        self.__dict__.update(client=kubernetes.client, config=kubernetes.config, watch=kubernetes.watch,
                             ApiException=ApiException, ConfigException=ConfigException)
        return self.__dict__[name]


k8s = _Kubernetes()

# What the client's kubeconfig loader raises on a file that is YAML but not a kubeconfig (a
# string, a list, a number where a list goes: it walks the parsed file without checking
# its shape), that is not UTF-8, or nested past the parser's recursion, besides its
# ConfigException and yaml.YAMLError; ValueError also covers urllib3's LocationParseError
# for a proxy-url it cannot parse (raised when the API client is built).
_MALFORMED_KUBECONFIG = (TypeError, AttributeError, KeyError, ValueError, RecursionError)
# Parts of the loader's messages that quote the file: a dict, a list, an object's repr, a
# quoted value (ConfigException quotes a whole user entry, token included; urllib3 the
# proxy URL, which may carry a password).
_QUOTED = re.compile(r"\{.*\}|\[.*\]|<.*>|'[^']*'")


def _unquoted(text: str) -> str:
    """A message of the loader's (or a line it logged), cut short, without what it quotes
    of the file."""
    return truncate(_QUOTED.sub("…", text))


def _kubeconfig_problem(e: BaseException) -> str:
    """Why a kubeconfig could not be used, in one line without the file's content."""
    text = _unquoted(str(e))
    return text if isinstance(e, (OSError, k8s.ConfigException)) else f"not a kubeconfig file ({type(e).__name__}: {text})"


class _LoggedErrors(logging.Handler):
    """The ERROR records logged while it is attached to the root logger: the client's
    loader logs a failed exec credential plugin (``logging.error`` in
    ``KubeConfigLoader._load_from_exec_plugin``) and goes on without credentials."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

LOG_PATH = "/api/v1/namespaces/{namespace}/pods/{name}/log"
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Container:
    name: str
    container_id: str  # "" while not started
    restart_count: int
    last_terminated_id: str  # the previous container's id, "" if none
    last_finished_ns: int = 0  # when the previous container ended (epoch ns), 0 if unknown
    # The current container has ended (state.terminated) and when (finishedAt, epoch ns,
    # whole seconds; 0 if unknown). Not part of equality: a fetch that sees the container
    # exit between its two looks at the pod still reads the same container's log.
    exited: bool = field(default=False, compare=False)
    finished_ns: int = field(default=0, compare=False)
    # The current container runs now (state.running). Not while it waits to be started
    # again (CrashLoopBackOff: state.waiting, the containerID still the exited one's).
    running: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    deleting: bool
    containers: tuple[Container, ...] = field(default_factory=tuple)
    deletion_ns: int = field(default=0, compare=False)  # metadata.deletionTimestamp, epoch ns; 0 if none
    resource_version: str = field(default="", compare=False)

    def container(self, wanted: str) -> Container | None:
        """The container to read: ``wanted``, else the one named traefik, else the first."""
        if wanted:
            return next((c for c in self.containers if c.name == wanted), None)
        return next((c for c in self.containers if c.name == "traefik"), None) or (
            self.containers[0] if self.containers else None
        )


def format_since(t_ns: int) -> str:
    """RFC 3339 ``sinceTime`` at whole seconds (the apiserver truncates to seconds anyway)."""
    return datetime.fromtimestamp(t_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch_ns(when: datetime | None) -> int:
    """A metav1.Time (whole seconds) as epoch ns; 0 for None."""
    return int(when.timestamp()) * 1_000_000_000 if when is not None else 0


def _pod_from(obj: client.V1Pod) -> Pod:
    spec_names = [c.name for c in (obj.spec.containers if obj.spec else [])]
    statuses = {s.name: s for s in ((obj.status.container_statuses if obj.status else None) or [])}
    containers = []
    for name in spec_names:
        s = statuses.get(name)
        last, finished = "", 0
        if s is not None and s.last_state is not None and s.last_state.terminated is not None:
            last = s.last_state.terminated.container_id or ""
            finished = _epoch_ns(s.last_state.terminated.finished_at)
        ended = s.state.terminated if s is not None and s.state is not None else None
        containers.append(
            Container(
                name=name,
                container_id=(s.container_id or "") if s is not None else "",
                restart_count=(s.restart_count or 0) if s is not None else 0,
                last_terminated_id=last,
                last_finished_ns=finished,
                exited=ended is not None,
                finished_ns=_epoch_ns(ended.finished_at) if ended is not None else 0,
                running=s is not None and s.state is not None and s.state.running is not None,
            )
        )
    meta = obj.metadata
    return Pod(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        deleting=meta.deletion_timestamp is not None,
        containers=tuple(containers),
        deletion_ns=_epoch_ns(meta.deletion_timestamp),
        resource_version=meta.resource_version or "",
    )


@dataclass(frozen=True)
class PodEvent:
    """One watch event: ``ADDED``, ``MODIFIED`` or ``DELETED`` (a ``DELETED`` pod is its
    last state), and the resourceVersion to resume the watch from."""

    kind: str
    pod: Pod
    resource_version: str


class PodWatch:
    """One watch request, iterated for its events. ``stop()`` (from any thread) ends it.

    Raises :class:`WatchExpired` on 410 Gone, else the usual :class:`KubeError` kinds.
    """

    def __init__(self, core: client.CoreV1Api, namespace: str, label_selector: str, resource_version: str,
                 timeout_seconds: int, connect_timeout: float) -> None:
        self._core = core
        self._namespace = namespace
        self._selector = label_selector
        self._rv = resource_version
        self._seconds = timeout_seconds
        # The server ends the stream after timeout_seconds; a read this much longer
        # means the connection died silently.
        self._request_timeout = (connect_timeout, timeout_seconds + 30.0)
        self._watch = k8s.watch.Watch()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()

    def __iter__(self) -> Iterator[PodEvent]:
        what = f"watch pods in {self._namespace}"
        try:
            stream = self._watch.stream(
                self._core.list_namespaced_pod,
                self._namespace,
                label_selector=self._selector,
                resource_version=self._rv,
                timeout_seconds=self._seconds,
                _request_timeout=self._request_timeout,
            )
            for event in stream:
                obj = event.get("object") if isinstance(event, dict) else None
                kind = event.get("type") if isinstance(event, dict) else None
                if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(obj, k8s.client.V1Pod):
                    continue  # BOOKMARK, or an object this client cannot model
                yield PodEvent(kind, _pod_from(obj), obj.metadata.resource_version or "")
        except k8s.ApiException as e:
            if e.status == 410:
                raise WatchExpired(f"{what}: HTTP 410: {truncate(e.reason or _status_message(e.body))}") from e
            raise _wrap(e.status or 0, e.body or e.reason, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._stopped:
                return  # stop() cut the connection
            raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e


def _status_message(body: bytes | str | None) -> str:
    """The ``message`` of a Kubernetes Status body, else the body, truncated."""
    try:
        doc = json.loads(body or b"")
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return truncate(doc["message"])
    except ValueError:
        pass
    return truncate(body)


def _wrap(status: int, body: bytes | str | None, what: str) -> KubeError:
    msg = f"{what}: HTTP {status}: {_status_message(body)}"
    if status in (401, 403):
        return KubeForbidden(
            msg + " — the scraper's ServiceAccount needs get/list/watch on pods and get on "
            "pods/log in the Traefik namespace (a Role and RoleBinding there)"
        )
    if status == 404:
        return PodGone(msg)
    if status == 400 and "previous" in what:
        return NoPreviousLog(msg)
    if status == 429 or status >= 500:
        return KubeUnavailable(msg)
    return KubeError(msg)


class _NoRetryOnReadTimeout(urllib3.util.Retry):
    """urllib3's default retries (3), except for an answer that timed out: retried, a
    log read of a hung apiserver took four read timeouts, past any time limit; it ends
    the call, and the next round (or the caller) tries again. A connection dropped after
    the request went out (an apiserver restart, a kept-alive connection closed as it was
    reused) is a read error to urllib3 too, and is still retried on a new connection.
    (``Retry.new`` builds the next one with ``type(self)``: the rule holds on every try.)"""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise urllib3.exceptions.MaxRetryError(_pool, url, error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class LogSource:
    """Lists the Traefik pods and streams their logs. One per worker process (shared by
    the threads of a thread pool: the client's urllib3 pool is thread-safe)."""

    def __init__(self, namespace: str, label_selector: str, timeout: float, streams: int = 0) -> None:
        """``streams``: follow streams this process may hold open at once (each keeps a
        connection of the pool out for as long as it runs)."""
        self.namespace = namespace
        self.label_selector = label_selector
        self.timeout = (min(timeout, 10.0), timeout)  # (connect, read)
        self.api_client = self._load(streams)
        self.core = k8s.client.CoreV1Api(self.api_client)

    @staticmethod
    def load_config() -> None:
        """Load the client's default config: in the cluster first (the pod's service
        account), then KUBECONFIG (else ``~/.kube/config``), and build an API client from
        it. No request is made. Raises ``KubeError`` (one line, none of the file's content)
        when neither gives a config, or when KUBECONFIG's cannot work: not a kubeconfig, a
        cluster without a server, an exec credential plugin that failed, a proxy-url urllib3
        cannot parse (the client takes all of these, then fails every request)."""
        try:
            k8s.config.load_incluster_config()
            return
        except k8s.ConfigException as e:
            in_cluster = e
        import yaml  # the client's own YAML parser (PyYAML, a dependency of kubernetes)

        def unusable(problem: str) -> KubeError:
            # In a pod (KUBERNETES_SERVICE_HOST set), why the service account failed
            # (no token mounted: automountServiceAccountToken: false) is the news.
            where = (f"in the cluster: {truncate(str(in_cluster))}" if os.environ.get("KUBERNETES_SERVICE_HOST")
                     else "not in a cluster")
            return KubeError(f"no Kubernetes config: {where}; KUBECONFIG: {problem}")

        logged = _LoggedErrors()
        root = logging.getLogger()
        root.addHandler(logged)
        try:
            # read KUBECONFIG now: the client's default was fixed when it was imported
            k8s.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
            configuration = k8s.client.Configuration.get_default_copy()
            k8s.client.ApiClient(configuration).close()
        except (k8s.ConfigException, OSError, *_MALFORMED_KUBECONFIG, yaml.YAMLError) as e:
            raise unusable(_kubeconfig_problem(e)) from e
        finally:
            root.removeHandler(logged)
        if logged.messages:
            raise unusable("its exec credential plugin failed: " + _unquoted(logged.messages[0]))
        if not configuration.host:
            raise unusable("its cluster has no server")

    @staticmethod
    def import_api() -> None:
        """Import the client's pod API (``CoreV1Api``, a 4 MiB module: 0.8 to 1.9 s of CPU)
        at a fetch worker's start. Imported lazily by the client, it was otherwise paid by
        the first round, which it delayed (bench/backlog.py's profile of the fetch worker:
        as much CPU as reading 80,000 lines on a quiet machine, 200,000 on a loaded one)."""
        k8s.client.CoreV1Api  # noqa: B018 - the attribute access is the import

    @staticmethod
    def _load(streams: int) -> client.ApiClient:
        LogSource.load_config()
        configuration = k8s.client.Configuration.get_default_copy()
        configuration.retries = _NoRetryOnReadTimeout(3)
        # Room in urllib3's pool for the follow streams besides the other calls (the
        # client's default is 5 x cpu_count); a connection returned to a full pool is
        # dropped with a warning.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, streams + 8)
        return k8s.client.ApiClient(configuration)

    def close(self) -> None:
        self.api_client.close()

    def list_pods(self) -> list[Pod]:
        return self.list_pods_at()[0]

    def list_pods_at(self) -> tuple[list[Pod], str]:
        """The Traefik pods and the list's resourceVersion, to watch from."""
        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=self.label_selector, _request_timeout=self.timeout
            )
        except k8s.ApiException as e:
            raise _wrap(e.status or 0, e.body, f"list pods in {self.namespace}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeUnavailable(f"list pods in {self.namespace}: {truncate(str(e))}") from e
        return [_pod_from(p) for p in pods.items], (pods.metadata.resource_version or "")

    def watch_pods(self, resource_version: str, timeout_seconds: int) -> PodWatch:
        """A watch of the Traefik pods from ``resource_version`` (a list's): iterate it
        for the changes after that version, until the server ends it after
        ``timeout_seconds``; resume from the last event's version."""
        return PodWatch(self.core, self.namespace, self.label_selector, resource_version,
                        timeout_seconds, self.timeout[0])

    def _timeout(self, deadline: float | None, what: str) -> tuple[float, float]:
        """(connect, read) timeouts of one call, cut to the time left before ``deadline``
        (``time.monotonic()`` s); ``FetchTimeLimitExceeded`` when none is."""
        left = time_left(deadline, what)
        return min(self.timeout[0], left), min(self.timeout[1], left)

    def get_pod(self, name: str, deadline: float | None = None) -> Pod:
        """The pod ``name``. Raises ``PodGone``, ``KubeError``, and
        ``FetchTimeLimitExceeded`` past ``deadline`` (``time.monotonic()`` s)."""
        what = f"get pod {name}"
        try:
            obj = self.core.read_namespaced_pod(name, self.namespace, _request_timeout=self._timeout(deadline, what))
        except k8s.ApiException as e:
            raise _wrap(e.status or 0, e.body, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            time_left(deadline, what, e)
            raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e
        return _pod_from(obj)

    def _open_log(self, name: str, query: list[tuple[str, str]], what: str,
                  timeout: tuple[float, float]) -> urllib3.BaseHTTPResponse:
        """Send one log request; the urllib3 response, status 200, not read yet."""
        params = self.api_client.param_serialize(
            "GET",
            LOG_PATH,
            path_params={"namespace": self.namespace, "name": name},
            query_params=query,
            header_params={"Accept": "text/plain"},
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api_client.call_api(*params, _request_timeout=timeout)
        except k8s.ApiException as e:
            raise _wrap(e.status or 0, e.body, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e
        raw = resp.response
        if resp.status != 200:
            try:
                raise _wrap(resp.status, raw.read(4096), what)
            finally:
                raw.close()
                raw.release_conn()
        return raw

    def stream_log(
        self,
        name: str,
        container: str,
        since_ns: int | None,
        limit_bytes: int,
        previous: bool = False,
        deadline: float | None = None,
    ) -> Iterator[bytes]:
        """The pod's log with timestamps, as byte chunks, from ``floor(since)`` on.

        Lines may be cut at chunk boundaries, and the last line at ``limit_bytes``. The
        chunks are of ``CHUNK`` bytes but the last: the server's own (what each of its
        writes flushed; the fake API's are 64 KiB) are joined, since ``consume()`` pays
        per chunk as well as per line (a fifth less per line with 64 KiB ones joined).
        ``deadline`` (``time.monotonic()`` seconds) bounds the whole read: the wait for
        the answer (the read timeout is cut to what is left) and the stream (checked after
        each chunk). Raises ``FetchTimeLimitExceeded`` past it, ``KubeError`` for the
        rest.
        """
        query = [("container", container), ("timestamps", "true"), ("limitBytes", str(limit_bytes))]
        if since_ns is not None:
            query.append(("sinceTime", format_since(since_ns)))
        if previous:
            query.append(("previous", "true"))
        what = f"read {'previous ' if previous else ''}log of {name}/{container}"
        try:
            raw = self._open_log(name, query, what, self._timeout(deadline, what))
        except KubeUnavailable as e:
            time_left(deadline, what, e)
            raise
        try:
            try:
                pending: list[bytes] = []  # what the server sent since the last chunk given
                size = 0
                for piece in raw.stream(CHUNK, decode_content=True):
                    pending.append(piece)
                    size += len(piece)
                    if size >= CHUNK:
                        yield b"".join(pending)
                        pending, size = [], 0
                    time_left(deadline, what)
                if pending:
                    yield b"".join(pending)
                    time_left(deadline, what)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                time_left(deadline, what, e)
                raise KubeUnavailable(f"{what}: stream broke: {truncate(str(e))}") from e
        finally:
            # A stream left early holds unread data: drop the connection, not reuse it.
            raw.close()
            raw.release_conn()

    def follow_log(self, name: str, container: str, since_ns: int | None, idle_timeout: float) -> LogFollow:
        """A ``follow=true`` stream of the pod's log with timestamps, from ``floor(since)``
        on: what the file holds, then each line as the runtime writes it, across size
        rotations (the kubelet reads the renamed file to its end before it opens the new
        one: ``waitLogs`` in staging/src/k8s.io/cri-client/pkg/logs/logs.go), until the
        container stops, the pod goes, or no byte came for ``idle_timeout`` seconds.
        Raises ``KubeError`` (``PodGone`` for 404) when the request fails."""
        query = [("container", container), ("timestamps", "true"), ("follow", "true")]
        if since_ns is not None:
            query.append(("sinceTime", format_since(since_ns)))
        what = f"follow log of {name}/{container}"
        return LogFollow(self._open_log(name, query, what, (self.timeout[0], idle_timeout)), what)


class LogFollow:
    """One open ``follow=true`` log stream: iterate ``chunks()`` in one thread (it releases
    the connection when it ends); ``stop()`` from any thread ends it (the blocked read
    returns)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, what: str) -> None:
        self._raw = raw
        self.what = what
        self.stopped = False

    def chunks(self) -> Iterator[bytes]:
        """The stream's bytes as they come (each chunk the server flushed, at most
        ``CHUNK``). Ends at the end of the stream or after ``stop()``; raises
        ``KubeUnavailable`` when it breaks or stays silent past its idle timeout (urllib3
        ``ReadTimeoutError``)."""
        try:
            yield from self._raw.stream(CHUNK, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self.stopped:
                return
            raise KubeUnavailable(f"{self.what}: stream ended: {truncate(str(e))}") from e
        finally:
            self.release()

    def release(self) -> None:
        """Close the connection (the reading thread, when done with it)."""
        self._raw.close()
        self._raw.release_conn()

    def stop(self) -> None:
        """End the stream from any thread: the socket is shut, so a read blocked in
        ``chunks()`` returns, and ``chunks()`` ends."""
        self.stopped = True
        conn = getattr(self._raw, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already


# For the ``check`` command -------------------------------------------------------------------


def access_review(source: LogSource, verb: str, resource: str, subresource: str = "") -> tuple[bool, str]:
    """May this identity ``verb`` ``resource[/subresource]`` (core group) in the Traefik
    namespace? A SelfSubjectAccessReview: every authenticated identity may create one (the
    ClusterRole ``system:basic-user``), so a missing permission is an answer, not an error.
    Returns ``(allowed, reason)``; the reason is the authorizer's, often empty on a denial."""
    attrs = k8s.client.V1ResourceAttributes(namespace=source.namespace, verb=verb, group="", resource=resource,
                                        subresource=subresource or None)
    body = k8s.client.V1SelfSubjectAccessReview(spec=k8s.client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    what = f"review {verb} {resource}{'/' + subresource if subresource else ''}"
    try:
        review = k8s.client.AuthorizationV1Api(source.api_client).create_self_subject_access_review(
            body, _request_timeout=source.timeout
        )
    except k8s.ApiException as e:
        raise _wrap(e.status or 0, e.body, what) from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e
    status = review.status
    if status is None:
        return False, "no status in the answer"
    return bool(status.allowed), truncate(status.reason or status.evaluation_error or "")


def newest_lines(source: LogSource, name: str, container: str, lines: int, limit_bytes: int) -> bytes:
    """The newest ``lines`` lines of a pod's log (``tailLines``), at most ``limit_bytes``,
    without timestamps: what Traefik wrote last, to see what its log looks like."""
    what = f"read log of {name}/{container}"
    try:
        resp = source.core.read_namespaced_pod_log(
            name, source.namespace, container=container, tail_lines=lines, limit_bytes=limit_bytes,
            _preload_content=False, _request_timeout=source.timeout,
        )
    except k8s.ApiException as e:
        raise _wrap(e.status or 0, e.body, what) from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e
    try:
        return resp.read(limit_bytes)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeUnavailable(f"{what}: {truncate(str(e))}") from e
    finally:
        resp.release_conn()
