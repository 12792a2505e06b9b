"""Per-process resources: the Redis pool, the ledger, the Kubernetes and platform
clients. A prefork worker's children create them in ``worker_process_init`` (after the
fork, so no socket is shared between processes); a thread-pool worker (the fetch and
report workers of compose and the manifests), beat and the CLI get them on first use,
one of each per process, shared by its threads."""

from __future__ import annotations

import ctypes
import logging
import threading

import redis

from app.errors import KubeError
from app.fetching import Fetcher
from app.filesource import FileFetcher
from app.follow import Follower
from app.kube import LogSource
from app.ledger import Ledger
from app.platform import PlatformClient
from app.reporting import Reporter
from app.settings import ConfigError, Settings, get_settings

log = logging.getLogger(__name__)

_state: dict[str, object] = {}
# The report and fetch workers run their tasks on threads (--pool=threads): they share
# one of each, created once.
_lock = threading.RLock()


def _libc_malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS).
    Looked up among the symbols already loaded (``dlopen(NULL)``): no library search,
    no ``ldconfig`` subprocess."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _libc_malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS after a read (glibc ``malloc_trim(0)``;
    nothing where there is no such call). A read's lines are allocated and freed by the
    thousand, and glibc keeps the freed heap mapped: without this the fetch worker's pool
    process stayed 6-9 MiB larger after its first read than before it, counted against
    its memory limit for good (bench/fetch_memory.py)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def settings() -> Settings:
    return get_settings()


def redis_client() -> redis.Redis:
    with _lock:
        if "redis" not in _state:
            _state["redis"] = redis.Redis.from_url(
                settings().redis_url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=30
            )
    return _state["redis"]  # type: ignore[return-value]


def ledger() -> Ledger:
    with _lock:
        if "ledger" not in _state:
            s = settings()
            _state["ledger"] = Ledger(redis_client(), s.redis_key_prefix, s.report_interval, s.interval_retention)
    return _state["ledger"]  # type: ignore[return-value]


def log_source() -> LogSource:
    with _lock:
        if "source" not in _state:
            s = settings()
            _state["source"] = LogSource(s.traefik_namespace, s.traefik_label_selector, s.kube_request_timeout,
                                         streams=s.follow_max_pods)
    return _state["source"]  # type: ignore[return-value]


def fetcher() -> Fetcher:
    with _lock:
        if "fetcher" not in _state:
            s = settings()
            _state["fetcher"] = Fetcher(
                log_source(), ledger(), domain=s.tunnel_domain, container=s.traefik_container, limit_bytes=s.fetch_max_bytes,
                reorder_window_ns=int(round(s.log_reorder_window * 1_000_000_000)), max_line_bytes=s.log_line_max_bytes,
            )
    return _state["fetcher"]  # type: ignore[return-value]


def follower() -> Follower:
    """This process's follow streams (``app/follow.py``), created at first use."""
    with _lock:
        if "follower" not in _state:
            s = settings()
            _state["follower"] = Follower(fetcher(), max_pods=s.follow_max_pods, min_rate=s.follow_min_rate,
                                          slice_seconds=s.fetch_min_interval)
    return _state["follower"]  # type: ignore[return-value]


def stop_following(timeout: float) -> None:
    """End this process's follow streams, if any (at shutdown): each commits what it read
    and releases its pod, within ``timeout`` seconds."""
    with _lock:
        f = _state.get("follower")
    if f is not None:
        f.stop(timeout)  # type: ignore[attr-defined]


def file_fetcher() -> FileFetcher:
    with _lock:
        if "file_fetcher" not in _state:
            s = settings()
            _state["file_fetcher"] = FileFetcher(ledger(), domain=s.tunnel_domain, limit_bytes=s.fetch_max_bytes,
                                                 max_line_bytes=s.log_line_max_bytes, clock_margin=s.seal_clock_margin)
    return _state["file_fetcher"]  # type: ignore[return-value]


def reporter() -> Reporter:
    with _lock:
        if "reporter" not in _state:
            s = settings()
            client = PlatformClient(s.platform_api_url, s.require_secret(), s.platform_connect_timeout,
                                    s.platform_read_timeout)
            _state["reporter"] = Reporter(ledger(), client, s)
    return _state["reporter"]  # type: ignore[return-value]


def check_ledger_identity() -> None:
    """At a worker's or beat's start: raises ``ConfigError`` (one line) when the ledger
    makes its reports under another ``REPORT_INTERVAL`` or ``SCRAPER_ID``
    (``Ledger.identity_problem``). Nothing to check before the ledger is initialised;
    a Redis that cannot be reached now is left to the tasks (``ensure_ledger`` checks
    again every round)."""
    led = ledger()
    try:
        record = led.init_record()
        problem = None if record is None else led.identity_problem(record, settings().scraper_id)
    except redis.RedisError as e:
        log.warning("cannot check the ledger's REPORT_INTERVAL and SCRAPER_ID (Redis: %s)", type(e).__name__)
        return
    if problem is not None:
        raise ConfigError(f"config error: {problem}")


def check_kube_config(who: str = "a fetch worker of LOG_SOURCE=kubernetes") -> None:
    """Load the Kubernetes config as the fetch side will (in the cluster, else
    KUBECONFIG), without a request, and import the client's pod API (``LogSource.import_api``).
    Raises ``ConfigError`` (one line, about ``who``) when there is no config."""
    try:
        LogSource.load_config()
        LogSource.import_api()
    except KubeError as e:
        raise ConfigError(f"config error: {who} has {e} (set KUBECONFIG, or run it in the "
                          "cluster with its service account)") from e


def init_process(fetches: bool = True) -> None:
    """Create what this process will use, up front: the ledger, the reporter when the
    secret is set, and the log source when the worker consumes a fetch queue
    (``fetches``; a report worker's processes never import the Kubernetes client).
    Anything inherited through the fork is dropped unclosed: its sockets belong to the
    parent."""
    _state.clear()
    ledger()
    if settings().platform_internal_secret is not None:
        reporter()
    if not fetches:
        return
    if settings().log_source == "file":
        file_fetcher()
        return
    try:
        fetcher()
    except KubeError as e:  # checked at the worker's start (check_kube_config): not expected
        log.warning("no Kubernetes client in this process: %s", e)


def reset() -> None:
    """Drop this process's resources (after a fork, or at shutdown)."""
    for name in ("source",):
        obj = _state.get(name)
        if obj is not None:
            obj.close()  # type: ignore[attr-defined]
    rep = _state.get("reporter")
    if rep is not None:
        rep.client.close()  # type: ignore[attr-defined]
    _state.clear()
